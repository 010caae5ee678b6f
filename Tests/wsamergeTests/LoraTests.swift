import Foundation
import Testing

/// `model+adapter` references (a PEFT LoRA adapter merged into its model) end to end, on adapters
/// PEFT itself saved (`fixtures/lora/generate_lora.py`): the merged tensors against the float64
/// numpy reference (`fixtures/lora/reference_lora.py`) rounded once, and against PEFT's own
/// `merge_and_unload`; recipes, the Hugging Face cache, directory outputs and refusals.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct LoraTests {
    static let dir = TestSupport.fixture("lora")

    /// Checks `merged` (a safetensors file) against the reference of `base`+`adapter`: the same
    /// names in the base's order, each value the float64 reference rounded once to the base's
    /// dtype (at most 1 ulp apart, for the order of the sums), and within the float32 rounding of
    /// PEFT's `merge_and_unload` (`expected/`).
    /// With `reference` false, PEFT's result alone (where the numpy reference does not model
    /// PEFT's layer types or tied weights); `expected` names PEFT's file when not `base+adapter`,
    /// and `baseFile` the model whose tensors the output has, when not `base`.
    static func expectReference(_ merged: String, base: String, adapter: String, weights: String? = nil, reference: Bool = true,
                                expected: String? = nil, baseFile: String? = nil,
                                sourceLocation: SourceLocation = #_sourceLocation) throws {
        try TestSupport.pythonOK("""
            sys.path.insert(0, sys.argv[2])
            from reference_lora import apply
            d = sys.argv[2]
            ref = apply(os.path.join(d, sys.argv[3]), os.path.join(d, sys.argv[4]), sys.argv[5] or None) if sys.argv[6] == "1" else None
            got = st_arrays(sys.argv[1]); base = st_arrays(os.path.join(d, sys.argv[8] or sys.argv[3]))
            peft = st_arrays(os.path.join(d, "expected", (sys.argv[7] or sys.argv[3] + "+" + sys.argv[4]) + ".safetensors"))
            assert list(got) == list(base), (list(got), list(base))
            changed = 0
            for k, v in got.items():
                assert v.dtype == base[k].dtype and v.shape == base[k].shape, k
                if ref is not None:
                    want = ref[k].astype(v.dtype)
                    bits = np.int32 if v.dtype == np.float32 else np.int16
                    ulps = np.abs(want.view(bits).astype(np.int64) - v.view(bits).astype(np.int64))
                    assert ulps.max() <= 1, (k, ulps.max())
                p = peft[k if k in peft else "model.embed_tokens.weight"].astype(np.float64)  # a tied head: the shared weight
                assert np.abs(v.astype(np.float64) - p).max() <= 2.0 ** -22 * np.abs(p).max(), k
                changed += not np.array_equal(v, base[k])
            assert changed > 0
            print(changed)
            """, [merged, dir, base, adapter, weights ?? "", reference ? "1" : "0", expected ?? "", baseFile ?? ""], sourceLocation: sourceLocation)
    }

    @Test("convert base+adapter gives the float64 reference rounded once, and PEFT's merge within its rounding",
          arguments: [("llama", "qv", nil), ("llama", "rich", nil), ("llama_bf16", "qv_bf16", nil), ("gpt2", "conv1d", nil),
                      ("llama", "qv_bin", "expected/qv_bin.adapter_model.safetensors")])
    func convertMatchesTheReference(base: String, adapter: String, weights: String?) throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let result = try TestSupport.wsamerge(["convert", Self.dir + "/" + base + "+" + Self.dir + "/" + adapter, "-o", tmp + "/out.safetensors"])
        #expect(result.status == 0, "\(result.stderr)")
        try Self.expectReference(tmp + "/out.safetensors", base: base, adapter: adapter, weights: weights.map { Self.dir + "/" + $0 })
    }

    @Test("square Conv1D weights take the delta transposed whatever the saved fan_in_fan_out says: by the model's config, else by their non-square namesakes")
    func conv1DLayout() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        // PEFT decides by layer type and saves the flag of the last layer it adapted: set it false.
        for adapter in ["cproj", "conv1d"] {
            try FileManager.default.copyItem(atPath: Self.dir + "/" + adapter, toPath: tmp + "/" + adapter)
            let config = try String(contentsOfFile: tmp + "/\(adapter)/adapter_config.json", encoding: .utf8)
            try config.replacingOccurrences(of: "\"fan_in_fan_out\": true", with: "\"fan_in_fan_out\": false")
                .write(toFile: tmp + "/\(adapter)/adapter_config.json", atomically: true, encoding: .utf8)
        }
        try FileManager.default.createDirectory(atPath: tmp + "/bare", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.dir + "/gpt2/model.safetensors", toPath: tmp + "/bare/model.safetensors")
        // Only the square attn.c_proj: GPT-2 by its config.json. Without one: by mlp.c_proj, c_attn and c_fc.
        for (model, adapter) in [(Self.dir + "/gpt2", "cproj"), (tmp + "/bare", "conv1d")] {
            let result = try TestSupport.wsamerge(["convert", model + "+" + tmp + "/" + adapter, "-o", tmp + "/out.safetensors", "--force"])
            #expect(result.status == 0, "\(result.stderr)")
            try Self.expectReference(tmp + "/out.safetensors", base: "gpt2", adapter: adapter, reference: false)
        }
    }

    @Test("a head tied to the embeddings changes with them: stored once (a LoRA on lm_head goes into the embeddings) or twice with the same bytes")
    func tiedEmbeddings() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        for base in ["llama_tied", "llama_tied_twice"] {
            let result = try TestSupport.wsamerge(["convert", Self.dir + "/" + base + "+" + Self.dir + "/tied_lora", "-o", tmp + "/out.safetensors", "--force"])
            #expect(result.status == 0, "\(result.stderr)")
            try Self.expectReference(tmp + "/out.safetensors", base: "llama_tied", adapter: "tied_lora", reference: false, baseFile: base)
        }
        // A head saved whole (modules_to_save) for a head stored once would untie them: refused.
        try FileManager.default.createDirectory(atPath: tmp + "/mts", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.dir + "/qv/adapter_config.json", toPath: tmp + "/mts/adapter_config.json")
        try TestSupport.pythonOK("""
            from safetensors.numpy import save_file
            save_file({"base_model.model.lm_head.weight": np.ones((40, 16), np.float32)}, sys.argv[1])
            """, [tmp + "/mts/adapter_model.safetensors"])
        TestSupport.expectRefusal(try TestSupport.wsamerge(["convert", Self.dir + "/llama_tied+" + tmp + "/mts", "-o", tmp + "/x.safetensors"]),
                                  code: 65, mentions: ["lm_head.weight", "tied to its embeddings", "tie_word_embeddings false"])
    }

    @Test("names: a missing adapter, named adapters in sub-folders, and a model path with '+' in a recipe")
    func names() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", Self.dir + "/llama+" + tmp + "/nothere"]), code: 66,
                                  mentions: ["nor a LoRA adapter directory '\(tmp)/nothere' to merge into '\(Self.dir)/llama'"])
        try FileManager.default.createDirectory(atPath: tmp + "/named", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.dir + "/qv", toPath: tmp + "/named/other")
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", Self.dir + "/llama+" + tmp + "/named"]), code: 66,
                                  mentions: ["no adapter_config.json", "named adapters in other", "MODEL+\(tmp)/named/other"])
        try FileManager.default.copyItem(atPath: Self.dir + "/llama", toPath: tmp + "/a+b")
        let recipe = tmp + "/recipe.yml"
        try "merge_method: passthrough\nmodels:\n  - model: \(tmp)/a+b+\(tmp)/named/other\n".write(toFile: recipe, atomically: true, encoding: .utf8)
        let result = try TestSupport.wsamerge(["fuse", "--quiet", "--recipe", recipe, "-o", tmp + "/out.safetensors"])
        #expect(result.status == 0, "\(result.stderr)")
        try Self.expectReference(tmp + "/out.safetensors", base: "llama", adapter: "qv")
    }

    @Test("stats of base+adapter are the stats of the merged model written out")
    func statsOfTheMergedModel() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let reference = Self.dir + "/llama+" + Self.dir + "/rich"
        #expect(try TestSupport.wsamerge(["convert", reference, "-o", tmp + "/m.safetensors"]).status == 0)
        func tensors(_ path: String) throws -> [NSDictionary] {
            let result = try TestSupport.wsamerge(["stats", path])
            #expect(result.status == 0, "\(result.stderr)")
            let doc = try #require(try result.json() as? [String: Any])
            return (doc["tensors"] as? [[String: Any]] ?? []).map { $0 as NSDictionary }
        }
        let merged = try tensors(reference), written = try tensors(tmp + "/m.safetensors")
        #expect(merged.count == 21 && merged == written)
        let inspected = try #require(try TestSupport.wsamerge(["inspect", reference]).json() as? [String: Any])
        #expect(inspected["file"] as? String == reference)
    }

    @Test("a recipe merges model+adapter references, the directory output gets the model's files, and the same bytes for every --jobs")
    func recipeWithAdapters() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = tmp + "/recipe.yml"
        try """
            merge_method: linear
            models:
              - model: \(Self.dir)/llama+\(Self.dir)/qv
                parameters: {weight: 1}
              - model: \(Self.dir)/llama+\(Self.dir)/rich
                parameters: {weight: 3}
            dtype: float32
            """.write(toFile: recipe, atomically: true, encoding: .utf8)
        for jobs in ["1", "2"] {
            let result = try TestSupport.wsamerge(["fuse", "--quiet", "--recipe", recipe, "--jobs", jobs, "-o", tmp + "/out\(jobs)/"])
            #expect(result.status == 0, "\(result.stderr)")
        }
        #expect(TestSupport.read(tmp + "/out1/model.safetensors") == TestSupport.read(tmp + "/out2/model.safetensors"))
        #expect(TestSupport.fileExists(tmp + "/out1/config.json"))
        try TestSupport.pythonOK("""
            sys.path.insert(0, sys.argv[2])
            from reference_lora import apply
            d = sys.argv[2]
            a = apply(d + "/llama", d + "/qv"); b = apply(d + "/llama", d + "/rich")
            got = st_arrays(sys.argv[1] + "/model.safetensors")
            for k, v in got.items():
                # each input is the merged model in its dtype (float32), then averaged in float64
                want = ((a[k].astype(np.float32).astype(np.float64) + 3 * b[k].astype(np.float32).astype(np.float64)) / 4).astype(np.float32)
                assert np.abs(want.view(np.int32).astype(np.int64) - v.view(np.int32)).max() <= 1, k
            assert json.load(open(sys.argv[1] + "/config.json"))["architectures"] == ["LlamaForCausalLM"]
            """, [tmp + "/out1", Self.dir])
    }

    @Test("model+adapter of two Hugging Face ids resolves both in the local cache, in recipes and on the command line")
    func huggingFaceIds() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        for (repo, source) in [("models--org--base", "llama"), ("models--org--adapter", "qv")] {
            let snapshot = tmp + "/hub/" + repo + "/snapshots/abc"
            try FileManager.default.createDirectory(atPath: snapshot, withIntermediateDirectories: true)
            for file in TestSupport.listing(Self.dir + "/" + source) {
                try FileManager.default.copyItem(atPath: Self.dir + "/" + source + "/" + file, toPath: snapshot + "/" + file)
            }
        }
        let recipe = tmp + "/recipe.yml"
        try "merge_method: passthrough\nmodels:\n  - model: org/base+org/adapter\n".write(toFile: recipe, atomically: true, encoding: .utf8)
        let result = try TestSupport.wsamerge(["fuse", "--quiet", "--recipe", recipe, "-o", tmp + "/out.safetensors"],
                                              environment: ["HF_HUB_CACHE": tmp + "/hub"])
        #expect(result.status == 0, "\(result.stderr)")
        try Self.expectReference(tmp + "/out.safetensors", base: "llama", adapter: "qv")
        // The command line resolves them too.
        let environment = ["HF_HUB_CACHE": tmp + "/hub"]
        let converted = try TestSupport.wsamerge(["convert", "org/base+org/adapter", "-o", tmp + "/cli.safetensors"], environment: environment)
        #expect(converted.status == 0, "\(converted.stderr)")
        try Self.expectReference(tmp + "/cli.safetensors", base: "llama", adapter: "qv")
        let stats = try TestSupport.wsamerge(["stats", "org/base"], environment: environment)
        #expect(stats.status == 0 && stats.stdout.contains("snapshots/abc"), "\(stats.stderr)")
        try "merge_method: passthrough\nmodels:\n  - model: org/base+org/missing\n".write(toFile: recipe, atomically: true, encoding: .utf8)
        let refused = try TestSupport.wsamerge(["fuse", "--recipe", recipe, "-o", tmp + "/x.safetensors"], environment: ["HF_HUB_CACHE": tmp + "/hub"])
        TestSupport.expectRefusal(refused, code: 66, mentions: ["models[0].model", "org/missing"])
    }

    @Test("a path that exists is read as it is, '+' and all")
    func plusInAName() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        try FileManager.default.createDirectory(atPath: tmp + "/a+qv", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.dir + "/llama/model.safetensors", toPath: tmp + "/a+qv/model.safetensors")
        let result = try TestSupport.wsamerge(["convert", tmp + "/a+qv", "-o", tmp + "/out.safetensors"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(TestSupport.read(tmp + "/out.safetensors") == TestSupport.read(Self.dir + "/llama/model.safetensors"))
    }

    struct Refusal: CustomTestStringConvertible, Sendable {
        let what: String
        /// The adapter's config (JSON) and tensors (Python dict expression over `q` = the qv adapter's arrays), or nil for a fixture.
        let config: String?
        let tensors: String?
        let fixture: String
        let code: Int32
        let mentions: [String]
        var testDescription: String { what }
    }

    static let prefix = "base_model.model.model.layers.0.self_attn.q_proj."
    static let refusals: [Refusal] = [
        Refusal(what: "DoRA", config: nil, tensors: nil, fixture: "dora", code: 65, mentions: ["adapter_config.json", "DoRA"]),
        Refusal(what: "an adapter of another model", config: nil, tensors: nil, fixture: "conv1d", code: 65,
                mentions: ["adapter_model.safetensors", "transformer.h.0.attn.c_attn", "which '"]),
        Refusal(what: "a model directory for an adapter", config: nil, tensors: nil, fixture: "gpt2", code: 66, mentions: ["no adapter_config.json"]),
        Refusal(what: "another PEFT method", config: #"{"peft_type": "IA3"}"#, tensors: "q", fixture: "", code: 65, mentions: ["IA3 adapter"]),
        Refusal(what: "invalid JSON", config: #"{"peft_type": "LORA","#, tensors: "q", fixture: "", code: 65, mentions: ["not valid JSON"]),
        Refusal(what: "no rank", config: #"{"peft_type": "LORA", "lora_alpha": 8}"#, tensors: "q", fixture: "", code: 65, mentions: ["'r' must be"]),
        Refusal(what: "a rank other than the factors'", config: #"{"peft_type": "LORA", "r": 3, "lora_alpha": 8}"#, tensors: "q", fixture: "",
                code: 65, mentions: ["rank 4 differs from the config's r = 3", "q_proj.lora_A.weight"]),
        Refusal(what: "a factor of the wrong shape", config: nil, tensors: #"{**q, P + "lora_B.weight": np.zeros((15, 4), np.float32)}"#, fixture: "",
                code: 65, mentions: ["do not fit", "q_proj.weight"]),
        Refusal(what: "lora_A alone", config: nil, tensors: #"{k: v for k, v in q.items() if not k.startswith(P + "lora_B")}"#, fixture: "",
                code: 65, mentions: ["has no lora_B.weight beside it"]),
        Refusal(what: "an unknown adapter tensor", config: nil, tensors: #"{**q, P + "lora_magnitude_vector": np.ones(16, np.float32)}"#, fixture: "",
                code: 65, mentions: ["lora_magnitude_vector", "does not merge"]),
        Refusal(what: "a name without PEFT's prefix", config: nil, tensors: #"{**q, "extra.weight": np.ones(2, np.float32)}"#, fixture: "",
                code: 65, mentions: ["'extra.weight'", "base_model.model."]),
        Refusal(what: "a flag given as a string", config: #"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": "true"}"#, tensors: "q",
                fixture: "", code: 65, mentions: ["'use_rslora' must be true or false"]),
        Refusal(what: "patterns given as a list", config: #"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": ["q_proj"]}"#, tensors: "q",
                fixture: "", code: 65, mentions: ["'rank_pattern' must be an object"]),
        Refusal(what: "BD-LoRA", config: #"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_bdlora": true}"#, tensors: "q",
                fixture: "", code: 65, mentions: ["'use_bdlora' is set"]),
        Refusal(what: "no weights file", config: #"{"peft_type": "LORA", "r": 4, "lora_alpha": 8}"#, tensors: nil, fixture: "", code: 66,
                mentions: ["neither adapter_model.safetensors nor adapter_model.bin"]),
    ]

    @Test("adapters that cannot be merged exactly are refused in one line, nothing written", arguments: refusals)
    func refusal(_ case_: Refusal) throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        var adapter = Self.dir + "/" + case_.fixture
        if case_.fixture.isEmpty {
            adapter = tmp + "/adapter"
            try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
            let config = try case_.config ?? String(contentsOfFile: Self.dir + "/qv/adapter_config.json", encoding: .utf8)
            try config.write(toFile: adapter + "/adapter_config.json", atomically: true, encoding: .utf8)
            if let tensors = case_.tensors {
                try TestSupport.pythonOK("""
                    from safetensors.numpy import save_file
                    q = st_arrays(sys.argv[1]); P = sys.argv[3]
                    save_file(\(tensors), sys.argv[2])
                    """, [Self.dir + "/qv/adapter_model.safetensors", adapter + "/adapter_model.safetensors", Self.prefix])
            }
        }
        let result = try TestSupport.wsamerge(["convert", Self.dir + "/llama+" + adapter, "-o", tmp + "/out.safetensors"])
        TestSupport.expectRefusal(result, code: case_.code, mentions: case_.mentions)
        #expect(!TestSupport.fileExists(tmp + "/out.safetensors"))
    }
}
