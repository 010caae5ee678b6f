import Foundation
import Testing
@testable import WSAMergeKit

@Suite("Recipe parsing and rendering")
struct RecipeParserTests {
    /// The error parsing `yaml` as `r.yml` gives, or "" when it parses.
    func message(_ yaml: String) -> String {
        do { _ = try RecipeParser.parse(yaml, file: "r.yml"); return "" } catch { return "\(error)" }
    }

    static let ties = """
        models:
          - model: a
            parameters:
              weight: 1.0
          - model: b
            parameters:
              weight: [0, 0.3, 0.7, 1] # weight gradient
          - model: c
            parameters:
              weight:
                - filter: mlp
                  value: 0.5
                - value: 0
        merge_method: average
        base_model: a
        parameters:
          normalize: yes
        dtype: bfloat16
        out_dtype: float32
        """

    @Test("values, gradients and filter lists become typed settings")
    func typedSettings() throws {
        let document = try RecipeParser.parse(Self.ties, file: "r.yml")
        let recipe = document.recipe
        #expect(recipe.mergeMethod == "average" && recipe.baseModel == "a")
        #expect(recipe.models.map(\.model) == ["a", "b", "c"])
        #expect(recipe.models[0].parameters == [Recipe.Setting("weight", .value(.number(1)))])
        #expect(recipe.models[1].parameters == [Recipe.Setting("weight", .gradient([0, 0.3, 0.7, 1]))])
        #expect(recipe.models[2].parameters == [Recipe.Setting("weight", .filtered([
            FilteredSetting(filter: "mlp", setting: .value(.number(0.5))), FilteredSetting(filter: nil, setting: .value(.number(0))),
        ]))])
        #expect(recipe.parameters == [Recipe.Setting("normalize", .value(.bool(true)))])
        #expect(recipe.dtype == .BF16 && recipe.outDType == .F32 && recipe.outputDType == .F32)
        #expect(document.lines["models[1].parameters.weight"] == 7)
    }

    @Test("as in mergekit (PyYAML): null values are absent, merge keys expand, a byte-order mark is skipped")
    func yamlAsMergekitReadsIt() throws {
        let nulls = try RecipeParser.parse("""
            merge_method: ties
            base_model: a
            tokenizer_source: null
            parameters:
            models:
              - model: a
                parameters:
              - model: b
                parameters: {weight: 1}
            """, file: "r.yml").recipe
        #expect(nulls.tokenizerSource == nil && nulls.parameters.isEmpty && nulls.models[0].parameters.isEmpty)
        #expect(nulls.models[1].parameters == [Recipe.Setting("weight", .value(.number(1)))])
        let merged = try RecipeParser.parse("""
            merge_method: ties
            base_model: a
            models:
              - model: b
                parameters: &common
                  density: 0.5
                  weight: 0.5
              - model: c
                parameters:
                  <<: *common
                  weight: 0.3
            """, file: "r.yml").recipe
        #expect(merged.models[1].parameters == [Recipe.Setting("weight", .value(.number(0.3))), Recipe.Setting("density", .value(.number(0.5)))])
        // Merged mappings merge in turn; earlier ones win, as in PyYAML.
        let nested = try RecipeParser.parse("""
            merge_method: ties
            base_model: a
            models:
              - model: b
                parameters: &w {weight: 2, density: 0.4}
              - model: c
                parameters: &v {<<: *w, weight: 3}
              - model: d
                parameters: {<<: [*v, {density: 0.9, weight: 5}]}
            """, file: "r.yml").recipe
        #expect(nested.models[2].parameters == [Recipe.Setting("weight", .value(.number(3))), Recipe.Setting("density", .value(.number(0.4)))])
        let marked = try RecipeParser.parse("\u{FEFF}merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n", file: "r.yml")
        #expect(marked.recipe.models.map(\.model) == ["a"] && marked.lines["models"] == 2)
        let bad = #expect(throws: WSAMergeError.self) {
            try RecipeParser.parse("merge_method: ties\nbase_model: a\nmodels:\n  - model: b\n    parameters:\n      <<: 3\n", file: "r.yml")
        }
        #expect(bad?.description.contains("r.yml:6: models[0].parameters: a merge key (<<) takes a mapping") == true, "\(String(describing: bad))")
    }

    @Test("render() reads back to an equal recipe, and renders the same text again")
    func roundTrip() throws {
        var recipe = try RecipeParser.parse(Self.ties, file: "r.yml").recipe
        recipe.models[1].model = "dir with space/true"
        recipe.metadata = [Recipe.MetadataEntry("note", "1.5"), Recipe.MetadataEntry("quote", "say \"hi\"\\n"),
                           Recipe.MetadataEntry("breaks", "a\u{85}b\u{2028}c\u{2029}d\u{FEFF}e\u{9F}f\u{7F}")]
        recipe.include = ["layers\\.[0-9]+\\."]
        recipe.onMissing = .union
        recipe.parameters.append(Recipe.Setting("weight", .gradient([1e-6, 0.1, 1e20])))
        recipe.chatTemplate = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
        let text = recipe.render()
        let again = try RecipeParser.parse(text, file: "r.yml").recipe
        #expect(again == recipe)
        #expect(again.render() == text)
        #expect(text.contains("model: \"dir with space/true\""))
        #expect(text.contains("weight: [1.0e-06, 0.1, 1.0e+20]"))
        #expect(text.contains(#"chat_template: "{% for m in messages %}{{ m['content'] }}\n{% endfor %}""#))
    }

    @Test("parameters of slices and their sources read back, and the base source's are refused")
    func sliceParameters() throws {
        let yaml = """
            merge_method: ties
            base_model: b
            slices:
              - sources:
                  - model: b
                    layer_range: [0, 2]
                  - model: a
                    layer_range: [0, 2]
                    parameters:
                      weight: [0.2, 0.9]
                      density:
                        - filter: mlp
                          value: 0.3
                parameters:
                  density: 0.6
            parameters:
              weight: 1
            """
        let recipe = try RecipeParser.parse(yaml, file: "r.yml").recipe
        #expect(recipe.slices[0].sources[1].parameters.map(\.name) == ["weight", "density"])
        #expect(recipe.slices[0].parameters == [Recipe.Setting("density", .value(.number(0.6)))])
        let text = recipe.render()
        #expect(try RecipeParser.parse(text, file: "r.yml").recipe == recipe)
        let onBase = yaml.replacingOccurrences(of: "      - model: b\n        layer_range: [0, 2]\n",
                                               with: "      - model: b\n        layer_range: [0, 2]\n        parameters: {weight: 1}\n")
        do {
            _ = try RecipeParser.parse(onBase, file: "r.yml")
            Issue.record("parameters of the base source were accepted")
        } catch {
            #expect("\(error)".contains("slices[0].sources[0].parameters: the base model's parameters are not used by ties"), "\(error)")
        }
    }

    @Test("a slice's own base_model reads back and is checked against its sources and the method")
    func sliceBaseModel() throws {
        let slice = { (base: String?) in
            "  - sources:\n      - model: a\n        layer_range: [0, 2]\n      - model: b\n        layer_range: [0, 2]\n"
                + (base.map { "    base_model: \($0)\n" } ?? "")
        }
        let recipe = try RecipeParser.parse("merge_method: ties\nslices:\n" + slice("a") + slice("b"), file: "r.yml").recipe
        #expect(recipe.baseModel == nil && recipe.slices.map(\.baseModel) == ["a", "b"] && recipe.baseModel(ofSlice: 1) == "b")
        #expect(try RecipeParser.parse(recipe.render(), file: "r.yml").recipe == recipe)
        #expect(recipe.render().contains("        layer_range: [0, 2]\n    base_model: a\n"))
        // null is absent, as elsewhere; the top-level base serves the slices without one.
        #expect(try RecipeParser.parse("merge_method: ties\nbase_model: a\nslices:\n" + slice("null") + slice("b"), file: "r.yml").recipe.baseModel(ofSlice: 0) == "a")
        #expect(message("merge_method: ties\nslices:\n" + slice(nil) + slice("b"))
            == "r.yml:3: slices[0]: ties needs base_model (the model the others were fine-tuned from), here or at the top level")
        #expect(message("merge_method: ties\nbase_model: a\nslices:\n" + slice("c"))
            == "r.yml:9: slices[0].base_model: 'c' is not a source of this slice (give it a layer_range there)")
        #expect(message("merge_method: nuslerp\nslices:\n" + slice("a") + slice(nil)).hasPrefix(
            "r.yml:9: slices[1]: other slices have a base_model and this one has none"))
        // A method that merges the base like any model ignores it, as mergekit does, source or not.
        #expect(message("merge_method: karcher\nslices:\n" + slice("a")) == "")
        #expect(message("merge_method: linear\nslices:\n" + slice("c") + "parameters: {weight: 1}\n") == "")
        #expect(message("merge_method: slerp\nslices:\n" + slice("a") + slice("b")) == "")
    }

    @Test("numbers and strings are written in a form every YAML reader reads back")
    func spellings() {
        #expect(YAMLText.number(1) == "1")
        #expect(YAMLText.number(0.3) == "0.3")
        #expect(YAMLText.number(-2.5) == "-2.5")
        #expect(YAMLText.number(1e-7) == "1.0e-07")
        for text in ["true", "No", "null", "~", "1", "0.5", "1e3", ".inf", "2024-01-01", "-x", "", "a b", "a:b", "#c"] {
            #expect(!YAMLText.plain(text), "\(text)")
        }
        for text in ["model.safetensors", "./m/a", "/abs/path", "org/name", "Llama-3-8B", "7B-model", "ties"] {
            #expect(YAMLText.plain(text), "\(text)")
        }
    }

    @Test("errors name the file, the line and the key")
    func errors() throws {
        #expect(message("merge_method: average\nmodels:\n  - model: a\n    parameters:\n      weight: high\n")
            == "r.yml:5: models[0].parameters.weight: expected a number or a list, got \"high\"")
        // YAML's infinities and NaN are numbers, but not finite ones; an empty list is named so.
        #expect(message("merge_method: average\nmodels:\n  - model: a\n    parameters: {weight: .inf}\n")
            == "r.yml:4: models[0].parameters.weight: expected a finite number, got .inf")
        #expect(message("merge_method: average\nmodels:\n  - model: a\n    parameters: {weight: [0, .NaN]}\n")
            == "r.yml:4: models[0].parameters.weight[1]: expected a finite number, got .NaN")
        #expect(message("merge_method: average\nmodels: []\n") == "r.yml:2: models: expected a list of {model, parameters}, got an empty list")
        #expect(message("merge_method: nope\nmodels: [{model: a}]\n").hasPrefix("r.yml:1: merge_method: unknown method 'nope' (supported: average"))
        #expect(message("models: [{model: a}]\n").hasPrefix("r.yml:1: merge_method is missing"))
        #expect(message("").hasPrefix("r.yml: the recipe is empty"))
        // The number of models a method merges is checked where the recipe lists them.
        #expect(message("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}, {model: c}]\nparameters: {t: 0.5}\n")
            == "r.yml:3: models: slerp merges exactly 1 model(s) besides the base; got 2")
        #expect(message("merge_method: nuslerp\nslices:\n  - sources:\n      - {model: a, layer_range: [0, 1]}\n    base_model: a\n")
            == "r.yml:3: slices[0].sources: nuslerp merges exactly 2 model(s) besides the base; got 0")
        // A chat template is auto, a known name or a Jinja template (mergekit: 20 characters and a brace).
        #expect(message("merge_method: average\nmodels: [{model: a}]\nchat_template: chatlm\n")
            == "r.yml:3: chat_template: 'chatlm' is neither auto, a template name (chatml, llama3, mistral, alpaca, exaone) nor a Jinja template")
        #expect(message("merge_method: average\nmodels: [{model: a}]\nchat_template: '{{ messages }}'\n").hasPrefix("r.yml:3: chat_template: '{{ messages }}' is neither"))
        #expect(message("merge_method: average\nmodels: [{model: a}]\nchat_template: [chatml]\n")
            == "r.yml:3: chat_template: expected auto, a template name or a Jinja template, got a list")
        #expect(message("- a\n- b\n").hasPrefix("r.yml:1: a recipe is a mapping"))
        let document = RecipeDocument(recipe: Recipe(mergeMethod: "average"), file: "r.yml", lines: ["slices[1]": 9])
        #expect(document.error("slices[1].sources[0].layer_range", "bad").description == "r.yml:9: slices[1].sources[0].layer_range: bad")
    }

    @Test("a command-line request becomes the recipe that gives it back")
    func requestRoundTrip() throws {
        var request = Merger.Request(inputs: ["b.safetensors", "c.safetensors"], strategy: "linear",
                                     output: OutputOptions(path: "out.safetensors", layout: .safetensors))
        request.base = "a.safetensors"
        try request.parameters.assign("weight", words: ["1", "2", "0.5"], for: AverageStrategy.declaration)
        try request.parameters.assign("normalize", words: ["false"], for: AverageStrategy.declaration)
        request.dtype = .F16
        request.extraMetadata = [("run", "7")]
        let recipe = try Recipe(request)
        let document = try RecipeParser.parse(recipe.render(), file: "r.yml")
        #expect(document.recipe == recipe)
        let replayed = try RecipeRunner.request(document, output: request.output, resolver: ModelResolver(hub: nil))
        #expect(replayed.inputs == ["a.safetensors", "b.safetensors", "c.safetensors"] && replayed.base == nil)
        #expect(replayed.parameters.perInput.first?.settings == [.value(.number(1)), .value(.number(2)), .value(.number(0.5))])
        #expect(replayed.parameters.shared.first?.setting == .value(.bool(false)))
        #expect(replayed.dtype == .F16 && replayed.extraMetadata.first! == ("run", "7"))
    }

    @Test("mergekit's modules: {default: …} is its slices or models, the module's parameters before the top-level ones")
    func defaultModule() throws {
        let flat = try RecipeParser.parse("""
            merge_method: task_arithmetic
            base_model: a
            slices:
              - sources:
                  - {model: b, layer_range: [0, 2], parameters: {weight: [{filter: q_proj, value: 0.1}]}}
                  - {model: a, layer_range: [0, 2]}
            parameters:
              lambda: [{filter: self_attn, value: 0.3}, {value: 0.9}]
              weight: [{filter: mlp, value: 2}, {filter: up, value: 3}, {value: 0.25}]
              normalize: true
            """, file: "flat.yml").recipe
        let module = try RecipeParser.parse("""
            merge_method: task_arithmetic
            base_model: a
            modules:
              default:
                parameters:
                  lambda: [{filter: self_attn, value: 0.3}]
                  weight: [{filter: mlp, value: 2}]
                  normalize: true
                slices:
                  - sources:
                      - {model: b, layer_range: [0, 2], parameters: {weight: [{filter: q_proj, value: 0.1}]}}
                      - {model: a, layer_range: [0, 2]}
            parameters:
              lambda: 0.9
              weight: [{filter: up, value: 3}, {value: 0.25}]
            """, file: "module.yml").recipe
        #expect(module == flat)
        // A plain value in the module hides the top-level one.
        let plain = try RecipeParser.parse("merge_method: linear\nmodules:\n  default:\n    models: [{model: a}, {model: b}]\n    parameters: {weight: 2}\nparameters: {weight: 1}\n", file: "r.yml").recipe
        #expect(plain.models.map(\.model) == ["a", "b"] && plain.parameters == [Recipe.Setting("weight", .value(.number(2)))])
        #expect(message("merge_method: linear\nmodules:\n  text_decoder: {models: [{model: a}]}\n  vision_tower: {models: [{model: a}]}\n")
            == "r.yml:3: modules: only the module 'default' (mergekit's name for the one module of a language model) is supported, got 'text_decoder', 'vision_tower': models of several modules are not merged")
        #expect(message("merge_method: linear\nmodels: [{model: a}]\nmodules:\n  default: {models: [{model: a}]}\n")
            == "r.yml:2: models: give one of models, slices or modules, not several (as mergekit)")
        #expect(message("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters:\n  t:\n    - pattern: self_attn\n      value: [0, 1]\n    - value: 0.5\n")
            == "r.yml:6: parameters.t[0].pattern: unknown key 'pattern' (supported here: filter, value): write filter to select tensors by name; mergekit 0.1.5 drops pattern, so the list's first value applied to every tensor there")
        #expect(message("merge_method: linear\nmodules:\n  default: {models: [{model: a}], tokenizer_source: base}\n")
            .hasPrefix("r.yml:3: modules.default.tokenizer_source: unknown key 'tokenizer_source' (supported here: slices, models, parameters)"))
    }

    @Test("tokenizer_source naming the base model is base (mergekit copies the same tokenizer); another model is refused")
    func tokenizerSourceByReference() throws {
        let yaml = "merge_method: linear\nbase_model: org/base\nmodels: [{model: org/base, parameters: {weight: 1}}, {model: org/ft, parameters: {weight: 1}}]\n"
        #expect(try RecipeParser.parse(yaml + "tokenizer_source: org/base\n", file: "r.yml").recipe.tokenizerSource == "base")
        let error = #expect(throws: WSAMergeError.self) { try RecipeParser.parse(yaml + "tokenizer_source: org/ft\n", file: "r.yml") }
        #expect(error?.description.hasPrefix("r.yml:4: tokenizer_source: only 'base' (or the base model's reference) is supported") == true)
        // mergekit's tokenizer block, with the base as its source and nothing else, is the same.
        for source in ["base", "org/base"] {
            #expect(try RecipeParser.parse(yaml + "tokenizer:\n  source: \(source)\n", file: "r.yml").recipe.tokenizerSource == "base")
        }
        #expect(message(yaml + "tokenizer:\n  source: org/ft\n").hasPrefix("r.yml:5: tokenizer.source: only 'base' (or the base model's reference)"))
        #expect(message(yaml + "tokenizer:\n  source: base\n  tokens: {<x>: {source: org/ft}}\n").hasPrefix("r.yml:6: tokenizer.tokens: only tokenizer: {source: base} is supported"))
        #expect(message(yaml + "tokenizer:\n  pad_to_multiple_of: 64\n").hasPrefix("r.yml:5: tokenizer.pad_to_multiple_of: only tokenizer: {source: base}"))
        #expect(message(yaml + "tokenizer: {tokens: null}\n").hasPrefix("r.yml:4: tokenizer: tokenizer without a source is mergekit's union"))
        #expect(message(yaml + "tokenizer_source: base\ntokenizer: {source: base}\n") == "r.yml:4: tokenizer_source: give tokenizer_source or tokenizer, not both (as mergekit)")
        let noBase = "merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ntokenizer:\n  source: base\n"
        let noBaseError = #expect(throws: WSAMergeError.self) { try RecipeParser.parse(noBase, file: "r.yml") }
        #expect(noBaseError?.description == "r.yml:4: tokenizer_source: 'base' needs a base_model to copy from")
    }

    @Test("a boolean parameter reads 1 and 0 as mergekit (pydantic) does: normalize: 1.0 is true")
    func booleansAsNumbers() throws {
        func normalize(_ text: String) throws -> ParameterSetting? {
            try RecipeParser.parse("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, density: 0.5}}]\nparameters: {normalize: \(text)}\n",
                                   file: "r.yml").recipe.parameters.first { $0.name == "normalize" }?.setting
        }
        #expect(try normalize("1.0") == .value(.bool(true)) && normalize("1") == .value(.bool(true)))
        #expect(try normalize("0") == .value(.bool(false)) && normalize("0.0") == .value(.bool(false)))
        for refused in ["2", "0.5", "'1'"] {
            #expect(throws: WSAMergeError.self, "\(refused)") { try normalize(refused) }
        }
    }

    @Test("a recipe cannot list a model twice, which a command line may")
    func duplicateModels() throws {
        var request = Merger.Request(inputs: ["a.safetensors", "b.safetensors", "a.safetensors"], strategy: "linear",
                                     output: OutputOptions(path: "out.safetensors", layout: .safetensors))
        let recipe = try Recipe(request)
        let error = #expect(throws: WSAMergeError.self) { try recipe.requireDistinctModels() }
        #expect(error?.exitCode == 64 && error?.description.contains("'a.safetensors' is an input twice") == true)
        #expect(throws: WSAMergeError.self) { try RecipeParser.parse(recipe.render(), file: "r.yml") }
        request.inputs[2] = "c.safetensors"
        try Recipe(request).requireDistinctModels()
    }

    @Test("slice positions restart per slice")
    func stacking() {
        #expect(LayerStack.positions([3, 1, 2]) == [0: 0, 1: 0.5, 2: 1, 3: 1, 4: 0, 5: 1])
    }

    @Test("Hugging Face ids resolve to the cached snapshot of refs/main, or of a revision")
    func huggingFaceCache() throws {
        let hub = NSTemporaryDirectory() + "wsamerge-hub-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: hub) }
        let repo = hub + "/models--org--name"
        for snapshot in ["aaa", "bbb"] {
            try FileManager.default.createDirectory(atPath: repo + "/snapshots/" + snapshot, withIntermediateDirectories: true)
        }
        try FileManager.default.createDirectory(atPath: repo + "/refs", withIntermediateDirectories: true)
        try "bbb\n".write(toFile: repo + "/refs/main", atomically: true, encoding: .utf8)
        let resolver = ModelResolver(hub: hub)
        #expect(try resolver.resolve("org/name") == repo + "/snapshots/bbb")
        #expect(try resolver.resolve("org/name@aaa") == repo + "/snapshots/aaa")
        #expect(throws: WSAMergeError.self) { try resolver.resolve("org/other") }
        #expect(try resolver.resolve("./not/an-id") == "./not/an-id")
        #expect(ModelResolver.isHubID("meta-llama/Llama-3.1-8B") && !ModelResolver.isHubID("a/b/c") && !ModelResolver.isHubID("../x"))
    }
}
