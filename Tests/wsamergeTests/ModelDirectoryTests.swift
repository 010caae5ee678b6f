import Foundation
import Testing

/// Model directories in and out: a merge of model directories into a directory is itself a
/// loadable model directory (config, tokenizer and sub-module files copied, `config.json`'s dtype
/// kept in step, a model card), names are compared after `--strip-prefix`, and models that
/// share no tensor name are refused with the prefix that explains it.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct ModelDirectoryTests {
    static let methods = TestSupport.fixtures + "/methods"

    /// A model directory holding `weights` as `model.safetensors` and the usual non-weight files.
    func modelDirectory(_ root: String, _ name: String, weights: String) throws -> String {
        let dir = root + "/" + name
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/1_Pooling", withIntermediateDirectories: true)
        try fm.copyItem(atPath: weights, toPath: dir + "/model.safetensors")
        try #"{"architectures": ["LlamaForCausalLM"], "hidden_size": 12,  "torch_dtype": "float32", "vocab_size": 6}"#
            .write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        try #"{"version": "1.0", "model": {"type": "BPE"}}"#.write(toFile: dir + "/tokenizer.json", atomically: true, encoding: .utf8)
        try #"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]"#
            .write(toFile: dir + "/modules.json", atomically: true, encoding: .utf8)
        try #"{"pooling_mode_mean_tokens": true}"#.write(toFile: dir + "/1_Pooling/config.json", atomically: true, encoding: .utf8)
        try "# \(name)\n".write(toFile: dir + "/README.md", atomically: true, encoding: .utf8)
        try "weights".write(toFile: dir + "/pytorch_model.bin.index.json", atomically: true, encoding: .utf8)
        return dir
    }

    func listing(_ dir: String) -> [String] {
        (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String] ?? []).filter {
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: dir + "/" + $0, isDirectory: &isDirectory) && !isDirectory.boolValue
        }.sorted()
    }

    @Test func mergedDirectoryIsAModelDirectory() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let base = try modelDirectory(root, "base", weights: Self.methods + "/base.safetensors")
        let a = try modelDirectory(root, "a", weights: Self.methods + "/ft0.safetensors")
        let b = try modelDirectory(root, "b", weights: Self.methods + "/ft1.safetensors")
        let out = root + "/merged/"
        let run = try TestSupport.wsamerge(["fuse", "--strategy", "ties", "--base", base, a, b, "--weights", "1,1",
                                            "--param", "density=0.5", "--dtype", "BF16", "-o", out])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(listing(out) == ["1_Pooling/config.json", "README.md", "config.json", "model.safetensors", "modules.json",
                                  "tokenizer.json", "wsamerge_recipe.yml"])
        let config = try String(contentsOfFile: out + "/config.json", encoding: .utf8)
        #expect(config == #"{"architectures": ["LlamaForCausalLM"], "hidden_size": 12,  "torch_dtype": "bfloat16", "vocab_size": 6}"#)
        #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/tokenizer.json")) == Data(contentsOf: URL(fileURLWithPath: base + "/tokenizer.json")))
        let card = try String(contentsOfFile: out + "/README.md", encoding: .utf8)
        for text in ["`ties`", "`\(a)`", "`\(b)`", "Base model: `\(base)`", "density", "merge_method: ties"] {
            #expect(card.contains(text), "model card lacks \(text)")
        }
        // Provenance records the inputs as given (the directories).
        let check = try TestSupport.python("""
            import sys, json; from safetensors import safe_open
            m = safe_open(sys.argv[1] + "/model.safetensors", "np").metadata()
            assert json.loads(m["wsamerge.inputs"]) == sys.argv[2:4], m["wsamerge.inputs"]
            assert m["wsamerge.base"] == sys.argv[4], m
            """, [out, a, b, base])
        #expect(check.status == 0, "\(check.stderr)")
    }

    /// sentence-transformers: a Dense module's weights (`2_Dense/model.safetensors`, listed in
    /// `modules.json`) are part of the model as `2_Dense.<name>`, and go back to their folder.
    @Test func sentenceTransformerModulesMergeAndGoBackToTheirFolder() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        var dirs: [String] = []
        for (k, weights) in ["ft0", "ft1"].enumerated() {
            let dir = try modelDirectory(root, "st\(k)", weights: Self.methods + "/\(weights).safetensors")
            try #"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}, {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#
                .write(toFile: dir + "/modules.json", atomically: true, encoding: .utf8)
            try FileManager.default.createDirectory(atPath: dir + "/2_Dense", withIntermediateDirectories: true)
            try #"{"in_features": 4, "out_features": 3}"#.write(toFile: dir + "/2_Dense/config.json", atomically: true, encoding: .utf8)
            let made = try TestSupport.python("""
                import sys, numpy as np; from safetensors.numpy import save_file
                save_file({"linear.weight": np.full((3, 4), float(sys.argv[2]), np.float32)}, sys.argv[1] + "/2_Dense/model.safetensors")
                """, [dir, "\(k + 1)"])
            #expect(made.status == 0, "\(made.stderr)")
            dirs.append(dir)
        }
        let inspect = try TestSupport.wsamerge(["inspect", dirs[0]])
        #expect(inspect.stdout.contains("\"name\":\"2_Dense.linear.weight\""), "\(inspect.stdout.prefix(300))")
        let out = root + "/merged/"
        let run = try TestSupport.wsamerge(["fuse", dirs[0], dirs[1], "-o", out])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(listing(out).contains("2_Dense/model.safetensors") && listing(out).contains("2_Dense/config.json"))
        let check = try TestSupport.python("""
            import sys, numpy as np; from safetensors.numpy import load_file
            dense = load_file(sys.argv[1] + "/2_Dense/model.safetensors")
            assert list(dense) == ["linear.weight"] and np.all(dense["linear.weight"] == 1.5), dense
            main = load_file(sys.argv[1] + "/model.safetensors")
            assert not any(k.startswith("2_Dense") for k in main) and "model.norm.weight" in main, list(main)
            """, [out])
        #expect(check.status == 0, "\(check.stderr)")
        // convert routes them the same way: the module's weights back in its own folder.
        let converted = root + "/converted/"
        let conversion = try TestSupport.wsamerge(["convert", dirs[0], "-o", converted])
        #expect(conversion.status == 0, "\(conversion.stderr)")
        let same = try TestSupport.python("""
            import sys, numpy as np; from safetensors.numpy import load_file
            dense = load_file(sys.argv[1] + "/2_Dense/model.safetensors")
            assert list(dense) == ["linear.weight"] and np.all(dense["linear.weight"] == 1), dense
            assert not any(k.startswith("2_Dense") for k in load_file(sys.argv[1] + "/model.safetensors"))
            """, [converted])
        #expect(same.status == 0, "\(same.stderr)")
        #expect(listing(converted).contains("2_Dense/config.json"))
    }

    /// `convert` of a model directory into a directory gives a model directory: the same tensors
    /// and every non-weight file, the source's own model card included (the same model), and
    /// `config.json`'s dtype rewritten with `--dtype`; `--no-copy-files` writes the weights alone.
    @Test func convertedDirectoryIsAModelDirectory() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let source = try modelDirectory(root, "m", weights: Self.methods + "/ft0.safetensors")
        let plain = try TestSupport.wsamerge(["convert", source, "-o", root + "/plain/"])
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(listing(root + "/plain") == ["1_Pooling/config.json", "README.md", "config.json", "model.safetensors", "modules.json",
                                             "tokenizer.json"])
        #expect(try String(contentsOfFile: root + "/plain/README.md", encoding: .utf8) == "# m\n")
        #expect(try String(contentsOfFile: root + "/plain/config.json", encoding: .utf8)
            == (try String(contentsOfFile: source + "/config.json", encoding: .utf8)))
        try TestSupport.pythonOK("""
            from safetensors.numpy import load_file
            a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
            assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
            """, [source + "/model.safetensors", root + "/plain/model.safetensors"])
        let half = try TestSupport.wsamerge(["convert", source, "--dtype", "F16", "-o", root + "/half/"])
        #expect(half.status == 0, "\(half.stderr)")
        #expect(try String(contentsOfFile: root + "/half/config.json", encoding: .utf8).contains(#""torch_dtype": "float16""#))
        let bare = try TestSupport.wsamerge(["convert", source, "--no-copy-files", "-o", root + "/bare/"])
        #expect(bare.status == 0, "\(bare.stderr)")
        #expect(listing(root + "/bare") == ["model.safetensors"])
    }

    /// Links that loop back to the directory or a folder above are not walked again: each file
    /// is copied once (one such link made 40 nested copies, two made the walk exponential).
    @Test func linkLoopsAreWalkedOnce() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let source = try modelDirectory(root, "m", weights: Self.methods + "/ft0.safetensors")
        let fm = FileManager.default
        for name in ["self", "again"] { try fm.createSymbolicLink(atPath: source + "/" + name, withDestinationPath: ".") }
        try fm.createSymbolicLink(atPath: source + "/1_Pooling/up", withDestinationPath: "..")
        let run = try TestSupport.wsamerge(["convert", source, "-o", root + "/out/"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(listing(root + "/out") == ["1_Pooling/config.json", "README.md", "config.json", "model.safetensors", "modules.json",
                                           "tokenizer.json"])
    }

    @Test func copyingCanBeTurnedOffOrRedirected() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let a = try modelDirectory(root, "a", weights: Self.methods + "/ft0.safetensors")
        let other = try modelDirectory(root, "other", weights: Self.methods + "/ft2.safetensors")
        try #"{"torch_dtype": "float16"}"#.write(toFile: other + "/config.json", atomically: true, encoding: .utf8)
        let plain = try TestSupport.wsamerge(["fuse", a, Self.methods + "/ft1.safetensors", "--no-copy-files", "-o", root + "/plain/"])
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(listing(root + "/plain") == ["model.safetensors", "wsamerge_recipe.yml"])
        let redirected = try TestSupport.wsamerge(["fuse", a, Self.methods + "/ft1.safetensors", "--copy-files-from", other,
                                                   "-o", root + "/redirected/"])
        #expect(redirected.status == 0, "\(redirected.stderr)")
        // No --dtype: the dtype is kept, and so is config.json.
        #expect(try String(contentsOfFile: root + "/redirected/config.json", encoding: .utf8) == #"{"torch_dtype": "float16"}"#)
        // A source that does not exist is a missing input (66), named; a file is a usage error.
        let missing = try TestSupport.wsamerge(["fuse", a, Self.methods + "/ft1.safetensors", "--copy-files-from", root + "/nowhere",
                                                "-o", root + "/missing/"])
        TestSupport.expectRefusal(missing, code: 66, mentions: [root + "/nowhere: no such directory"])
        let file = try TestSupport.wsamerge(["fuse", a, Self.methods + "/ft1.safetensors", "--copy-files-from", a + "/config.json",
                                             "-o", root + "/file/"])
        TestSupport.expectRefusal(file, code: 64, mentions: ["is not a directory"])
        #expect(!TestSupport.fileExists(root + "/missing") && !TestSupport.fileExists(root + "/file"))
        // Not silently ignored: with a single-file output, or together with --no-copy-files.
        for (command, output, extra) in [("fuse", root + "/single.safetensors", []), ("fuse", root + "/both/", ["--no-copy-files"]),
                                         ("convert", root + "/single.safetensors", [])] {
            let inputs = command == "fuse" ? [a, Self.methods + "/ft1.safetensors"] : [a]
            let run = try TestSupport.wsamerge([command] + inputs + ["--copy-files-from", other, "-o", output] + extra)
            TestSupport.expectRefusal(run, code: 64, mentions: [extra.isEmpty ? "must be a directory" : "contradict"])
            #expect(!TestSupport.fileExists(output))
        }
    }

    /// The conversation each named chat template renders, as its format defines it (bos `<s>`,
    /// eos `</s>`, with the generation prompt).
    static let conversations = [
        "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
        "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "mistral": "<s> [INST] Be brief.\n\nHi [/INST] Hello!</s> [INST] Bye [/INST]",
        "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!\n\n### Instruction:\nBye\n\n### Response:\n",
        "exaone": "[|system|]Be brief.[|endofturn|]\n[|user|]Hi\n[|assistant|]Hello![|endofturn|]\n[|user|]Bye\n[|assistant|]",
    ]

    @Test("--chat-template and a recipe's chat_template set the copied tokenizer files' template")
    func chatTemplates() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let a = try modelDirectory(root, "a", weights: Self.methods + "/ft0.safetensors")
        let b = try modelDirectory(root, "b", weights: Self.methods + "/ft1.safetensors")
        let c = try modelDirectory(root, "c", weights: Self.methods + "/ft2.safetensors")
        let config = "{\n  \"add_bos_token\": true,\n  \"chat_template\": \"{{ old }}\",\n  \"model_max_length\": 1000000000000000019884624838656\n}\n"
        try config.write(toFile: a + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        try "{{ old }}".write(toFile: a + "/chat_template.jinja", atomically: true, encoding: .utf8)
        // transformers 5 keeps a tokenizer's other named templates in a folder; a processor its own.
        try FileManager.default.createDirectory(atPath: a + "/additional_chat_templates", withIntermediateDirectories: true)
        try "{{ 'tool use' }}".write(toFile: a + "/additional_chat_templates/tool_use.jinja", atomically: true, encoding: .utf8)
        try #"{"chat_template": "{{ 'processor' }}"}"#.write(toFile: a + "/chat_template.json", atomically: true, encoding: .utf8)
        for (dir, template) in [(b, "{{ 'B' }} of two models"), (c, "{{ 'B' }} of two models")] {
            try "{\"chat_template\": \"\(template)\"}".write(toFile: dir + "/tokenizer_config.json", atomically: true, encoding: .utf8)
        }
        // Each name: the config's old value replaced (every other byte kept), the copied .jinja
        // replaced, and the template renders its format in transformers' Jinja environment.
        for name in Self.conversations.keys.sorted() {
            let out = root + "/" + name
            let run = try TestSupport.wsamerge(["fuse", a, b, "--chat-template", name, "-o", out + "/"])
            #expect(run.status == 0, "\(run.stderr)")
            let written = try String(contentsOfFile: out + "/tokenizer_config.json", encoding: .utf8)
            #expect(written.hasPrefix("{\n  \"add_bos_token\": true,\n  \"chat_template\": \"")
                    && written.hasSuffix("\",\n  \"model_max_length\": 1000000000000000019884624838656\n}\n"))
            #expect(try String(contentsOfFile: out + "/wsamerge_recipe.yml", encoding: .utf8).contains("chat_template: \(name)\n"))
            #expect(!listing(out).contains { $0.hasPrefix("additional_chat_templates") || $0 == "chat_template.json" })
            let rendered = try TestSupport.python("""
                import sys, json
                from jinja2.sandbox import ImmutableSandboxedEnvironment
                from jinja2.exceptions import TemplateError
                def raise_exception(message): raise TemplateError(message)
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                env.globals["raise_exception"] = raise_exception
                template = json.load(open(sys.argv[1] + "/tokenizer_config.json"))["chat_template"]
                assert template == open(sys.argv[1] + "/chat_template.jinja").read()
                messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
                t = env.from_string(template)
                got = t.render(messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
                assert got == sys.argv[2], (got, sys.argv[2])
                # Without the generation prompt, the text ends with the last message.
                assert got.startswith(t.render(messages=messages, add_generation_prompt=False, bos_token="<s>", eos_token="</s>"))
                if sys.argv[3] == "mistral":
                    try: t.render(messages=messages[1:2] * 2, bos_token="<s>", eos_token="</s>"); raise SystemExit("no alternation check")
                    except TemplateError as e: assert "alternate" in str(e)
                """, [out, Self.conversations[name]!, name])
            #expect(rendered.status == 0, "\(name): \(rendered.stderr)")
        }
        // A source without chat_template.jinja gets one all the same, and one left in the output
        // by an earlier merge is replaced (with --force; refused without it), since transformers
        // reads that file first.
        let chatml = try String(contentsOfFile: root + "/chatml/chat_template.jinja", encoding: .utf8)
        let fromB = try TestSupport.wsamerge(["fuse", b, a, "--chat-template", "chatml", "-o", root + "/fromb/"])
        #expect(fromB.status == 0, "\(fromB.stderr)")
        #expect(try String(contentsOfFile: root + "/fromb/chat_template.jinja", encoding: .utf8) == chatml)
        try FileManager.default.createDirectory(atPath: root + "/stale", withIntermediateDirectories: true)
        try "{{ stale }}".write(toFile: root + "/stale/chat_template.jinja", atomically: true, encoding: .utf8)
        let refused = try TestSupport.wsamerge(["fuse", b, a, "--chat-template", "chatml", "-o", root + "/stale/"])
        TestSupport.expectRefusal(refused, code: 73, mentions: [root + "/stale/chat_template.jinja: already exists"])
        #expect(listing(root + "/stale") == ["chat_template.jinja"])
        let forced = try TestSupport.wsamerge(["fuse", b, a, "--chat-template", "chatml", "-o", root + "/stale/", "--force"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(try String(contentsOfFile: root + "/stale/chat_template.jinja", encoding: .utf8) == chatml)
        // A recipe's auto: the template most models have (b's and c's, not a's).
        let recipe = root + "/auto.yml"
        try "merge_method: linear\nmodels:\n  - model: \(a)\n    parameters: {weight: 1}\n  - model: \(b)\n    parameters: {weight: 1}\n  - model: \(c)\n    parameters: {weight: 1}\nchat_template: auto\n"
            .write(toFile: recipe, atomically: true, encoding: .utf8)
        let auto = try TestSupport.wsamerge(["fuse", "--recipe", recipe, "-o", root + "/auto/"])
        #expect(auto.status == 0, "\(auto.stderr)")
        #expect(try String(contentsOfFile: root + "/auto/chat_template.jinja", encoding: .utf8) == "{{ 'B' }} of two models")
        // Nowhere to put it: a file output, no copied files, a source without tokenizer_config.json
        // (also for auto, which would find none here).
        let plain = try modelDirectory(root, "plain", weights: Self.methods + "/ft2.safetensors")
        let auto2 = try TestSupport.wsamerge(["fuse", plain, Self.methods + "/ft1.safetensors", "--chat-template", "auto", "-o", root + "/auto2.safetensors"])
        TestSupport.expectRefusal(auto2, code: 64, mentions: ["--chat-template: ", "must be a directory"])
        for (inputs, extra, output, mentions) in [([a, b], [String](), root + "/single.safetensors", "must be a directory"),
                                                  ([a, b], ["--no-copy-files"], root + "/bare/", "this merge copies none"),
                                                  ([Self.methods + "/ft0.safetensors", a], [], root + "/plainfirst/", "copies none"),
                                                  ([a, b], ["--copy-files-from", c + "/1_Pooling"], root + "/pooling/", "has none")] {
            let run = try TestSupport.wsamerge(["fuse"] + inputs + ["--chat-template", "chatml", "-o", output] + extra)
            TestSupport.expectRefusal(run, code: 64, mentions: ["--chat-template: ", mentions])
            #expect(!TestSupport.fileExists(output))
        }
        // --print-recipe carries it; a name that is not one is refused before anything else.
        let printed = try TestSupport.wsamerge(["fuse", a, b, "--chat-template", "llama3", "--print-recipe", "-o", root + "/p/"])
        #expect(printed.status == 0 && printed.stdout.contains("\nchat_template: llama3\n"), "\(printed.stdout)\(printed.stderr)")
        let unknown = try TestSupport.wsamerge(["fuse", a, b, "--chat-template", "chatlm", "--print-recipe", "-o", root + "/p/"])
        TestSupport.expectRefusal(unknown, code: 64, mentions: ["--chat-template: 'chatlm' is neither auto, a template name"])
        // In a recipe, the error names its line.
        try "merge_method: linear\nmodels:\n  - model: \(a)\n    parameters: {weight: 1}\nchat_template: llama3\n".write(toFile: recipe, atomically: true, encoding: .utf8)
        let single = try TestSupport.wsamerge(["fuse", "--recipe", recipe, "-o", root + "/single.safetensors"])
        TestSupport.expectRefusal(single, code: 64, mentions: [recipe + ":5: chat_template: ", "must be a directory"])
    }

    /// transformers is not in the test venv; install it there to run this check (see README).
    static let hasTransformers = TestSupport.hasPython
        && (try? TestSupport.run(TestSupport.python, ["-c", "import transformers"]).status) == 0

    @Test(.enabled(if: hasTransformers, "transformers is not installed in the test venv"))
    func loadsWithTransformersWhenInstalled() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let made = try TestSupport.python("""
            import sys, transformers
            c = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
            for k in range(2):
                transformers.BertModel(c).save_pretrained(sys.argv[1] + f"/m{k}")
            """, [root])
        #expect(made.status == 0, "\(made.stderr)")
        let run = try TestSupport.wsamerge(["fuse", root + "/m0", root + "/m1", "--dtype", "F16", "-o", root + "/merged/"])
        #expect(run.status == 0, "\(run.stderr)")
        let load = try TestSupport.python("""
            import sys, transformers
            m = transformers.AutoModel.from_pretrained(sys.argv[1])
            assert str(m.dtype) == "torch.float16", m.dtype
            """, [root + "/merged"])
        #expect(load.status == 0, "\(load.stderr)")
    }

    @Test func prefixesAreStrippedOrNamed() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let prefixed = root + "/bert.safetensors"
        let made = try TestSupport.python("""
            import sys; from safetensors.numpy import load_file, save_file
            t = load_file(sys.argv[1]); save_file({"bert." + k: v for k, v in t.items()}, sys.argv[2], metadata={"format": "pt"})
            """, [Self.methods + "/ft1.safetensors", prefixed])
        #expect(made.status == 0, "\(made.stderr)")
        let union = try TestSupport.wsamerge(["fuse", Self.methods + "/ft0.safetensors", prefixed, "--on-missing", "union", "-o", root + "/u.safetensors"])
        TestSupport.expectRefusal(union, code: 65, mentions: ["share no tensor name", "--strip-prefix bert."])
        #expect(!TestSupport.fileExists(root + "/u.safetensors"))
        let stripped = try TestSupport.wsamerge(["fuse", Self.methods + "/ft0.safetensors", prefixed, "--strip-prefix", "bert.",
                                                 "-o", root + "/s.safetensors"])
        #expect(stripped.status == 0, "\(stripped.stderr)")
        // The recorded recipe replays the stripped merge.
        let recipe = try TestSupport.wsamerge(["fuse", Self.methods + "/ft0.safetensors", prefixed, "--strip-prefix", "bert.",
                                               "--print-recipe", "-o", root + "/unused.safetensors"])
        #expect(recipe.stdout.contains("strip_prefix: [bert.]") || recipe.stdout.contains("strip_prefix: ['bert.']")
                || recipe.stdout.contains("strip_prefix: [\"bert.\"]"), "\(recipe.stdout)")
        try recipe.stdout.write(toFile: root + "/r.yml", atomically: true, encoding: .utf8)
        let replay = try TestSupport.wsamerge(["fuse", "--recipe", root + "/r.yml", "-o", root + "/r.safetensors"])
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: root + "/r.safetensors")) == Data(contentsOf: URL(fileURLWithPath: root + "/s.safetensors")))
        let same = try TestSupport.wsamerge(["fuse", Self.methods + "/ft0.safetensors", Self.methods + "/ft1.safetensors", "-o", root + "/t.safetensors"])
        #expect(same.status == 0)
        let stats = try TestSupport.wsamerge(["stats", "--strip-prefix", "bert.", prefixed])
        #expect(stats.stdout.contains("\"name\":\"model.norm.weight\"") && !stats.stdout.contains("\"name\":\"bert."))
        func tensors(_ path: String) throws -> Data {
            let document = try #require(try TestSupport.wsamerge(["stats", path]).json() as? [String: Any])
            return try JSONSerialization.data(withJSONObject: document["tensors"] ?? [], options: .sortedKeys)
        }
        #expect(try tensors(root + "/s.safetensors") == tensors(root + "/t.safetensors"))
    }
}
