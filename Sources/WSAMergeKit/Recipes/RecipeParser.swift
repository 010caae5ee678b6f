import Yams
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A parsed recipe with where it came from, so that later checks (layer ranges, model files)
/// can name the recipe's line too.
public struct RecipeDocument: Sendable {
    public let recipe: Recipe
    /// The recipe's name in messages (its path, or `<stdin>`).
    public let file: String
    /// The line of each key path (`models[1].parameters.density`, `slices[0].sources[1].layer_range`).
    public let lines: [String: Int]

    public init(recipe: Recipe, file: String, lines: [String: Int] = [:]) {
        self.recipe = recipe
        self.file = file
        self.lines = lines
    }

    /// `file:line: path: message` as a usage error (the line of `path`, else of its nearest parent).
    public func error(_ path: String, _ message: String) -> WSAMergeError {
        .usage("\(location(path)): \(path.isEmpty ? "" : path + ": ")\(message)")
    }

    /// `error` located at `path`, keeping its kind (a missing model stays a missing input).
    public func error(_ path: String, wrapping error: WSAMergeError) -> WSAMergeError {
        switch error {
        case .missingInput(let file, let reason): .missingInput(file: "\(location(path)): \(path)", reason: "'\(file)': \(reason)")
        case .usage(let message): self.error(path, message)
        default: error
        }
    }

    /// `file:line` of `path`'s line, else of its nearest parent's; `file` when none is known.
    func location(_ path: String) -> String {
        var key = path
        while lines[key] == nil, let cut = key.lastIndex(where: { $0 == "." || $0 == "[" }) { key = String(key[..<cut]) }
        return file + (lines[key].map { ":\($0)" } ?? "")
    }
}

/// Reads a mergekit-format YAML recipe into a `Recipe`, checking every key, method, parameter
/// and value against the method's declaration; every refusal names the recipe's line and key.
public enum RecipeParser {
    /// The keys of an entry of `models` besides the method's per-input files.
    static let modelKeys = ["model", "parameters"]

    public static func parse(_ text: String, file: String) throws -> RecipeDocument {
        var parser = Parser(file: file)
        let root: Node?
        do {
            // A byte-order mark in front, as some editors save, is skipped (as PyYAML does).
            root = try Yams.compose(yaml: text.hasPrefix("\u{FEFF}") ? String(text.dropFirst()) : text)
        } catch let error as YamlError {
            throw parser.yamlError(error)
        } catch {
            throw WSAMergeError.usage("\(file): not valid YAML: \(error)")
        }
        guard let root else { throw WSAMergeError.usage("\(file): the recipe is empty (it needs at least merge_method and models or slices)") }
        let recipe = try parser.recipe(root)
        return RecipeDocument(recipe: recipe, file: file, lines: parser.lines)
    }

    private struct Parser {
        let file: String
        var lines: [String: Int] = [:]

        init(file: String) { self.file = file }

        func fail(_ node: Node?, _ path: String, _ message: String) -> WSAMergeError {
            let line = node?.mark.map { ":\($0.line)" } ?? ""
            return .usage("\(file)\(line): \(path.isEmpty ? "" : path + ": ")\(message)")
        }

        func yamlError(_ error: YamlError) -> WSAMergeError {
            func at(_ mark: Mark, _ problem: String, _ context: YamlError.Context?) -> WSAMergeError {
                // "expected a single document in the stream, but found another document"
                let text = context.map { "\($0.text), \(problem)" } ?? problem
                let hint = problem.contains("another document") ? " (a recipe file is one merge; mergekit-mega's files of several are not read: split it)" : ""
                return .usage("\(file):\(mark.line): not valid YAML: \(text)\(hint)")
            }
            switch error {
            case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
                 .composer(let context, let problem, let mark, _):
                return at(mark, problem, context)
            case .duplicatedKeysInMapping(let duplicates, let context):
                return .usage("\(file):\(context.mark.line): duplicate key \(duplicates.map { "'\($0)'" }.joined(separator: ", "))")
            case .reader(let problem, _, _, _):
                return .usage("\(file): not valid YAML: \(problem)")
            default:
                return .usage("\(file): not valid YAML: \(error)")
            }
        }

        mutating func note(_ node: Node, _ path: String) {
            if let line = node.mark?.line { lines[path] = line }
        }

        /// The pairs of `mapping` with YAML merge keys (`<<: *defaults`, or a list of them)
        /// expanded as PyYAML does: its own pairs, then those of the merged mappings in order
        /// (their own merge keys expanded too). Of a key given twice, the first is read.
        func expanded(_ mapping: Node.Mapping, _ path: String) throws -> [(Node, Node)] {
            var own: [(Node, Node)] = [], merged: [(Node, Node)] = []
            for (key, value) in mapping {
                guard let scalar = key.scalar, scalar.string == "<<", scalar.style == .plain else {
                    own.append((key, value))
                    continue
                }
                let sources: [Node] = if case .sequence(let list) = value { Array(list) } else { [value] }
                for source in sources {
                    guard case .mapping(let more) = source else {
                        throw fail(source, path, "a merge key (<<) takes a mapping or a list of mappings, got \(describe(source))")
                    }
                    merged += try expanded(more, path)
                }
            }
            return own + merged
        }

        /// The pairs of a mapping (merge keys expanded), keys as strings, each key's path noted;
        /// unknown keys refused.
        mutating func mapping(_ node: Node, _ path: String, what: String, allowed: [String]?) throws -> [(key: String, node: Node, keyNode: Node)] {
            guard case .mapping(let mapping) = node else {
                throw fail(node, path, "expected \(what), got \(describe(node))")
            }
            var pairs: [(String, Node, Node)] = []
            var seen = Set<String>()
            for (keyNode, value) in try expanded(mapping, path) {
                guard case .scalar(let scalar) = keyNode else { throw fail(keyNode, path, "keys must be names, got \(describe(keyNode))") }
                let key = scalar.string
                guard seen.insert(key).inserted else { continue }
                let keyPath = path.isEmpty ? key : "\(path).\(key)"
                if let allowed, !allowed.contains(key) {
                    throw fail(keyNode, keyPath, "unknown key '\(key)' (supported\(path.isEmpty ? "" : " here"): \(allowed.joined(separator: ", ")))")
                }
                note(keyNode, keyPath)
                pairs.append((key, value, keyNode))
            }
            return pairs
        }

        func describe(_ node: Node) -> String {
            switch node {
            case .scalar(let scalar): YAMLText.quoted(scalar.string)
            case .mapping: "a mapping"
            case .sequence(let sequence): sequence.isEmpty ? "an empty list" : "a list"
            case .alias: "an alias"
            }
        }

        /// Whether `node` is YAML's null (`key:` with nothing after it, `~`, `null`).
        func isNull(_ node: Node) -> Bool {
            guard case .scalar(let scalar) = node else { return false }
            return scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string)
        }

        func string(_ node: Node, _ path: String, what: String = "a string") throws -> String {
            guard case .scalar(let scalar) = node, !isNull(node) else {
                throw fail(node, path, "expected \(what), got \(describe(node))")
            }
            return scalar.string
        }

        func strings(_ node: Node, _ path: String) throws -> [String] {
            if case .sequence(let sequence) = node {
                return try sequence.enumerated().map { try string($1, "\(path)[\($0)]") }
            }
            return [try string(node, path, what: "a string or a list of strings")]
        }

        func integer(_ node: Node, _ path: String) throws -> Int {
            guard case .scalar(let scalar) = node, scalar.style == .plain, let n = Int(scalar.string) else {
                throw fail(node, path, "expected a whole number, got \(describe(node))")
            }
            return n
        }

        mutating func recipe(_ root: Node) throws -> Recipe {
            guard case .mapping = root else {
                throw fail(root, "", "a recipe is a mapping of keys (merge_method, models or slices, parameters, …), got \(describe(root))")
            }
            let all = try mapping(root, "", what: "a mapping", allowed: nil)
            // The method decides the other keys (its file roles) and how parameters are read.
            guard let methodPair = all.first(where: { $0.key == "merge_method" }) else {
                throw fail(root, "", "merge_method is missing (supported: \(RecipeRunner.methodNames.joined(separator: ", ")))")
            }
            let method = try string(methodPair.node, "merge_method")
            guard let strategy = RecipeRunner.strategy(named: method) else {
                throw fail(methodPair.node, "merge_method", "unknown method '\(method)' (supported: \(RecipeRunner.methodNames.joined(separator: ", ")))")
            }
            let declaration = strategy.declaration
            let sharedFiles = declaration.files.filter { $0.scope == .shared }.map(\.name)
            let perInputFiles = declaration.files.filter { $0.scope == .perInput }.map(\.name)
            let allowed = Recipe.keys + sharedFiles
            var recipe = Recipe(mergeMethod: method)
            let (pairs, moduleParameters) = try module(all)
            let baseReference = pairs.first { $0.key == "base_model" }.flatMap { $0.node.scalar?.string }
            for (key, node, keyNode) in pairs {
                guard allowed.contains(key) else {
                    let hint = perInputFiles.contains(key) ? "; '\(key)' is given per model, in each entry of models" : ""
                    throw fail(keyNode, key, "unknown key '\(key)' (supported: \(allowed.joined(separator: ", ")))\(hint)")
                }
                // A key with a null value is absent, as in mergekit's configuration (a bare
                // `parameters:`, `tokenizer_source: null`).
                if key != "merge_method" && isNull(node) { continue }
                switch key {
                case "merge_method": note(node, key)
                case "base_model": recipe.baseModel = try string(node, key, what: "a model path or name")
                case "models":
                    guard case .sequence(let sequence) = node, sequence.count > 0 else {
                        throw fail(node, key, "expected a list of {model, parameters}, got \(describe(node))")
                    }
                    for (i, entry) in sequence.enumerated() {
                        let path = "models[\(i)]"
                        note(entry, path)
                        var model = Recipe.Model("")
                        var given = false
                        for (field, value, _) in try mapping(entry, path, what: "a mapping {model, parameters}", allowed: RecipeParser.modelKeys + perInputFiles) {
                            switch field {
                            case "model":
                                model.model = try string(value, "\(path).model", what: "a model path or name")
                                given = true
                            case "parameters":
                                if isNull(value) { continue }
                                model.parameters = try parameters(value, "\(path).parameters", declaration, perModel: true)
                            default:
                                model.files.append(Recipe.File(field, try string(value, "\(path).\(field)", what: "a file path")))
                            }
                        }
                        guard given else { throw fail(entry, path, "the entry has no 'model'") }
                        recipe.models.append(model)
                    }
                case "slices":
                    guard case .sequence(let sequence) = node, sequence.count > 0 else {
                        throw fail(node, key, "expected a list of {sources: […]}, got \(describe(node))")
                    }
                    for (i, entry) in sequence.enumerated() {
                        let path = "slices[\(i)]"
                        note(entry, path)
                        var sources: [Recipe.Source]?
                        var settings: [Recipe.Setting] = []
                        var base: String?
                        for (field, value, _) in try mapping(entry, path, what: "a mapping {sources: […]}", allowed: ["sources", "base_model", "parameters"]) {
                            switch field {
                            case "parameters":
                                if !isNull(value) { settings = try parameters(value, "\(path).parameters", declaration, perModel: false) }
                            case "base_model":
                                if !isNull(value) { base = try string(value, "\(path).base_model", what: "a model path or name") }
                            default:
                                sources = try self.sources(value, "\(path).sources", declaration)
                            }
                        }
                        guard let sources else { throw fail(entry, path, "the slice has no 'sources'") }
                        recipe.slices.append(Recipe.Slice(sources, parameters: settings, baseModel: base))
                    }
                case "parameters":
                    recipe.parameters = try parameters(node, key, declaration, perModel: false)
                case "dtype", "out_dtype":
                    let name = try string(node, key, what: "a dtype")
                    guard let dtype = Recipe.dtype(named: name) else {
                        throw fail(node, key, "unknown dtype '\(name)' (supported: float16, bfloat16, float32, float64)")
                    }
                    if key == "dtype" { recipe.dtype = dtype } else { recipe.outDType = dtype }
                case "tokenizer_source":
                    try tokenizerSource(node, key, base: baseReference)
                    recipe.tokenizerSource = "base"
                case "tokenizer":
                    // mergekit's TokenizerConfig: a source (union by default), tokens, padding.
                    if let other = pairs.first(where: { $0.key == "tokenizer_source" && !isNull($0.node) }) {
                        throw fail(other.keyNode, other.key, "give tokenizer_source or tokenizer, not both (as mergekit)")
                    }
                    var source: Node?
                    for (field, value, fieldNode) in try mapping(node, key, what: "a mapping {source, tokens, pad_to_multiple_of}",
                                                                 allowed: ["source", "tokens", "pad_to_multiple_of"]) where !isNull(value) {
                        guard field == "source" else {
                            throw fail(fieldNode, "\(key).\(field)", "only tokenizer: {source: base} is supported (copy the base model's tokenizer and config files); \(field) changes the vocabulary, which wsamerge does not")
                        }
                        source = value
                    }
                    guard let source else {
                        throw fail(node, key, "tokenizer without a source is mergekit's union of the vocabularies, which wsamerge does not build; give source: base")
                    }
                    try tokenizerSource(source, "\(key).source", base: baseReference)
                    note(node, "tokenizer_source")  // later messages about the source point here
                    recipe.tokenizerSource = "base"
                case "chat_template":
                    let template = try string(node, key, what: "auto, a template name or a Jinja template")
                    do { try ChatTemplate.validate(template) } catch WSAMergeError.usage(let message) {
                        throw fail(node, key, message)
                    }
                    recipe.chatTemplate = template
                case "include": recipe.include = try strings(node, key)
                case "exclude": recipe.exclude = try strings(node, key)
                case "strip_prefix": recipe.stripPrefix = try strings(node, key)
                case "on_missing":
                    let text = try string(node, key)
                    guard let value = OnMissing(rawValue: text) else {
                        throw fail(node, key, "expected one of \(OnMissing.allCases.map(\.rawValue).joined(separator: ", ")), got \(describe(node))")
                    }
                    recipe.onMissing = value
                case "metadata":
                    for (name, value, _) in try mapping(node, key, what: "a mapping of key: value", allowed: nil) {
                        recipe.metadata.append(Recipe.MetadataEntry(name, try string(value, "\(key).\(name)", what: "a string")))
                    }
                default:
                    recipe.files.append(Recipe.File(key, try string(node, key, what: "a file path")))
                }
            }
            if let moduleParameters, !isNull(moduleParameters) {
                let settings = try parameters(moduleParameters, "modules.default.parameters", declaration, perModel: false)
                recipe.parameters = Recipe.Setting.layered(settings, over: recipe.parameters)
            }
            try check(recipe, declaration, root: root)
            return recipe
        }

        /// Refuses a tokenizer source other than `base` or the base model's reference (which
        /// mergekit reads as the same tokenizer).
        func tokenizerSource(_ node: Node, _ path: String, base: String?) throws {
            let source = try string(node, path)
            guard source == "base" || source == base else {
                throw fail(node, path, "only 'base' (or the base model's reference) is supported (copy the base model's tokenizer and config files); '\(source)' would build a new tokenizer, which wsamerge does not")
            }
        }

        /// The top-level pairs with mergekit's `modules: {default: {slices | models, parameters}}`
        /// (how mergekit writes the configuration of a model with one module) read as top-level
        /// `slices` or `models`, and the module's parameters, which come between the slices' and
        /// the top-level ones. Models of several modules (vision-language) are refused.
        mutating func module(_ all: [(key: String, node: Node, keyNode: Node)]) throws
            -> (pairs: [(key: String, node: Node, keyNode: Node)], parameters: Node?) {
            guard let modules = all.first(where: { $0.key == "modules" }), !isNull(modules.node) else {
                return (all.filter { $0.key != "modules" }, nil)
            }
            if let other = all.first(where: { ["models", "slices"].contains($0.key) && !isNull($0.node) }) {
                throw fail(other.keyNode, other.key, "give one of models, slices or modules, not several (as mergekit)")
            }
            let entries = try mapping(modules.node, "modules", what: "a mapping of module: {slices or models}", allowed: nil)
            guard entries.count == 1, let entry = entries.first, entry.key == "default" else {
                let names = entries.map { "'\($0.key)'" }.joined(separator: ", ")
                throw fail(modules.node, "modules", "only the module 'default' (mergekit's name for the one module of a language model) is supported, got \(names): models of several modules are not merged")
            }
            let inner = try mapping(entry.node, "modules.default", what: "a mapping {slices or models, parameters}", allowed: ["slices", "models", "parameters"])
            let pairs = all.filter { $0.key != "modules" } + inner.filter { $0.key != "parameters" }
            return (pairs, inner.first { $0.key == "parameters" }?.node)
        }

        mutating func sources(_ node: Node, _ path: String, _ declaration: StrategyDeclaration) throws -> [Recipe.Source] {
            guard case .sequence(let sequence) = node, sequence.count > 0 else {
                throw fail(node, path, "expected a list of {model, layer_range}, got \(describe(node))")
            }
            var result: [Recipe.Source] = []
            for (j, entry) in sequence.enumerated() {
                let sourcePath = "\(path)[\(j)]"
                note(entry, sourcePath)
                var model: String?
                var range: Range<Int>?
                var settings: [Recipe.Setting] = []
                for (field, value, _) in try mapping(entry, sourcePath, what: "a mapping {model, layer_range}", allowed: ["model", "layer_range", "parameters"]) {
                    switch field {
                    case "model": model = try string(value, "\(sourcePath).model", what: "a model path or name")
                    case "layer_range":
                        let rangePath = "\(sourcePath).layer_range"
                        guard case .sequence(let bounds) = value, bounds.count == 2 else {
                            throw fail(value, rangePath, "expected [first, end] (end excluded), got \(describe(value))")
                        }
                        let a = try integer(bounds[0], rangePath), b = try integer(bounds[1], rangePath)
                        guard a >= 0, a <= b else { throw fail(value, rangePath, "expected 0 ≤ first ≤ end, got [\(a), \(b)]") }
                        range = a..<b
                    default:
                        if !isNull(value) { settings = try parameters(value, "\(sourcePath).parameters", declaration, perModel: true) }
                    }
                }
                guard let model else { throw fail(entry, sourcePath, "the source has no 'model'") }
                guard let range else { throw fail(entry, sourcePath, "the source has no 'layer_range'") }
                result.append(Recipe.Source(model, layers: range, parameters: settings))
            }
            return result
        }

        mutating func parameters(_ node: Node, _ path: String, _ declaration: StrategyDeclaration, perModel: Bool) throws -> [Recipe.Setting] {
            let method = declaration.identifier
            var result: [Recipe.Setting] = []
            for (name, value, keyNode) in try mapping(node, path, what: "a mapping of parameter: value", allowed: nil) {
                let keyPath = "\(path).\(name)"
                guard let parameter = declaration.parameter(name) else {
                    let known = declaration.parameters.map(\.name)
                    throw fail(keyNode, keyPath, known.isEmpty ? "\(method) takes no parameters"
                        : "\(method) has no parameter '\(name)' (its parameters: \(known.joined(separator: ", ")))")
                }
                if perModel && parameter.scope == .shared {
                    let levels = path.hasPrefix("slices") ? "the slice's or the top-level parameters" : "the top-level parameters"
                    throw fail(keyNode, keyPath, "'\(name)' is one value for the whole merge, which mergekit 0.1.5 ignores here: remove it to get mergekit's result, or give it under \(levels) to apply it")
                }
                result.append(Recipe.Setting(name, try setting(value, keyPath, parameter)))
            }
            return result
        }

        /// A value, a gradient (numbers), or a list of `{filter, value}`.
        mutating func setting(_ node: Node, _ path: String, _ parameter: ParameterDeclaration) throws -> ParameterSetting {
            let expected: String
            switch parameter.kind {
            case .number: expected = "a number or a list"
            default: expected = parameter.expectation + " or a list of {filter, value}"
            }
            switch node {
            case .scalar:
                return .value(try value(node, path, parameter, expected: expected))
            case .sequence(let sequence):
                guard !sequence.isEmpty else { throw fail(node, path, "expected \(expected), got an empty list") }
                if sequence.allSatisfy({ if case .mapping = $0 { true } else { false } }) {
                    var entries: [FilteredSetting] = []
                    for (i, entry) in sequence.enumerated() {
                        let entryPath = "\(path)[\(i)]"
                        note(entry, entryPath)
                        var filter: String?
                        var setting: ParameterSetting?
                        // mergekit's examples/gradient-slerp.yml wrote `pattern`, which mergekit drops.
                        if case .mapping(let pairs) = entry, let key = pairs.first(where: { $0.key.string == "pattern" })?.key {
                            throw fail(key, "\(entryPath).pattern", "unknown key 'pattern' (supported here: filter, value): write filter to select tensors by name; mergekit 0.1.5 drops pattern, so the list's first value applied to every tensor there")
                        }
                        for (field, value, _) in try mapping(entry, entryPath, what: "{filter, value}", allowed: ["filter", "value"]) {
                            if field == "filter" {
                                // a plain number or boolean is no name (mergekit refuses it too)
                                if case .scalar(let scalar) = value, scalar.style == .plain,
                                   Double(scalar.string) != nil || ["true", "false", "yes", "no", "on", "off"].contains(scalar.string.lowercased()) {
                                    throw fail(value, "\(entryPath).filter", "expected a part of tensor names (a string), got \(scalar.string); quote it")
                                }
                                filter = try string(value, "\(entryPath).filter", what: "a part of tensor names")
                            }
                            else { setting = try self.setting(value, "\(entryPath).value", parameter) }
                        }
                        guard let setting else { throw fail(entry, entryPath, "the entry has no 'value'") }
                        entries.append(FilteredSetting(filter: filter, setting: setting))
                    }
                    return .filtered(entries)
                }
                guard parameter.kind == .number else {
                    throw fail(node, path, "expected \(expected) (a list of numbers, a gradient, is for number parameters), got \(describe(node))")
                }
                var values: [Double] = []
                for (i, item) in sequence.enumerated() {
                    guard case .scalar = item, case .number(let x) = try value(item, "\(path)[\(i)]", parameter, expected: "a number") else {
                        throw fail(item, "\(path)[\(i)]", "expected a number, got \(describe(item))")
                    }
                    values.append(x)
                }
                return .gradient(values)
            case .mapping, .alias:
                throw fail(node, path, "expected \(expected), got \(describe(node))")
            }
        }

        /// A scalar read as the parameter's kind wants it, then checked against it.
        func value(_ node: Node, _ path: String, _ parameter: ParameterDeclaration, expected: String) throws -> ParameterValue {
            guard case .scalar(let scalar) = node else { throw fail(node, path, "expected \(expected), got \(describe(node))") }
            let plain = scalar.style == .plain
            let text = scalar.string
            var value: ParameterValue?
            switch parameter.kind {
            case .integer:
                // whole numbers as integers, exactly (a seed of 2⁵³ or more is no double)
                if plain, let n = Int(text) { value = .integer(n) } else if plain, let x = Double(text) { value = .number(x) }
            case .number:
                if plain, let x = Double(text) { value = .number(x) }
                // YAML's own spellings of infinity and NaN (Double does not read them)
                if plain, [".inf", "+.inf", "-.inf", ".nan"].contains(text.lowercased()) {
                    throw fail(node, path, "expected a finite number, got \(text)")
                }
            case .bool:
                if plain {
                    switch text.lowercased() {
                    case "true", "yes", "on": value = .bool(true)
                    case "false", "no", "off": value = .bool(false)
                    // 1 and 0 as mergekit's pydantic reads them (`normalize: 1.0` in model cards)
                    default: if let x = Double(text), x == 0 || x == 1 { value = .bool(x == 1) }
                    }
                }
            case .string, .choice:
                if !(plain && ["", "~", "null"].contains(text)) { value = .string(text) }
            }
            guard let value, parameter.check(value) != nil else {
                throw fail(node, path, "expected \(expected), got \(describe(node))")
            }
            return value
        }

        /// What only the whole recipe shows: models or slices, the base, required files and weights.
        func check(_ recipe: Recipe, _ declaration: StrategyDeclaration, root: Node) throws {
            let method = declaration.identifier
            func at(_ path: String, _ message: String) -> WSAMergeError {
                RecipeDocument(recipe: recipe, file: file, lines: lines).error(path, message)
            }
            if !recipe.models.isEmpty && !recipe.slices.isEmpty {
                throw at("slices", "give either models or slices, not both")
            }
            if recipe.models.isEmpty && recipe.slices.isEmpty {
                throw fail(root, "", "the recipe needs models (or slices)")
            }
            let sliceBases = recipe.slices.indices.filter { recipe.slices[$0].baseModel != nil }
            switch declaration.base {
            case .required where recipe.baseModel == nil && (recipe.slices.isEmpty || sliceBases.count < recipe.slices.count):
                throw at(sliceBases.isEmpty ? "merge_method" : "slices[\(recipe.slices.indices.first { !sliceBases.contains($0) }!)]",
                         "\(method) needs base_model (the model the others were fine-tuned from)\(sliceBases.isEmpty ? "" : ", here or at the top level")")
            case .optional where recipe.baseModel == nil && !sliceBases.isEmpty && sliceBases.count < recipe.slices.count:
                throw at("slices[\(recipe.slices.indices.first { !sliceBases.contains($0) }!)]",
                         "other slices have a base_model and this one has none: give every slice one, or one at the top level")
            case .none where !RecipeRunner.stacks(recipe) && (recipe.baseModel != nil || !sliceBases.isEmpty):
                throw at(recipe.baseModel != nil ? "base_model" : "slices[\(sliceBases[0])].base_model", "\(method) takes no base model")
            default: break
            }
            // (A method that merges the base like any model, and a stack, ignore it, as mergekit does.)
            for i in sliceBases where !recipe.slices[i].sources.contains(where: { $0.model == recipe.slices[i].baseModel })
                && !RecipeRunner.stacks(recipe) && declaration.base != .input {
                throw at("slices[\(i)].base_model", "'\(recipe.slices[i].baseModel!)' is not a source of this slice (give it a layer_range there)")
            }
            if recipe.tokenizerSource != nil && recipe.baseModel == nil {
                throw at("tokenizer_source", "'base' needs a base_model to copy from")
            }
            // How many models the method merges, checked where the recipe lists them.
            let usesBase = declaration.base == .required || declaration.base == .optional
            if recipe.slices.isEmpty {
                var count = recipe.models.filter { !(usesBase && $0.model == recipe.baseModel) }.count
                if declaration.base == .input, let base = recipe.baseModel, !recipe.models.contains(where: { $0.model == base }) { count += 1 }
                if let problem = declaration.inputCountProblem(count) { throw at("models", problem) }
            } else if !RecipeRunner.stacks(recipe) {
                // A slice of its base alone keeps the base's layers (as in mergekit), if some slice merges models.
                let counts = recipe.slices.indices.map { i in
                    recipe.slices[i].sources.filter { !(usesBase && $0.model == recipe.baseModel(ofSlice: i)) }.count
                }
                for (i, count) in counts.enumerated() where !(usesBase && count == 0 && counts.contains { $0 > 0 }) {
                    if let problem = declaration.inputCountProblem(count) { throw at("slices[\(i)].sources", problem) }
                }
            }
            // The same model twice among the inputs (mergekit: "Duplicate merge inputs").
            for (j, model) in recipe.models.enumerated() {
                if let i = recipe.models.prefix(j).firstIndex(where: { $0.model == model.model }) {
                    throw at("models[\(j)].model", "'\(model.model)' is already models[\(i)]; each model is one input (mergekit refuses duplicates too)")
                }
            }
            for (i, slice) in recipe.slices.enumerated() {
                for (j, source) in slice.sources.enumerated() {
                    if let k = slice.sources.prefix(j).firstIndex(where: { $0.model == source.model }) {
                        throw at("slices[\(i)].sources[\(j)].model", "'\(source.model)' is already sources[\(k)] of this slice; each model is one input (mergekit refuses duplicates too)")
                    }
                }
            }
            for (i, slice) in recipe.slices.enumerated() where declaration.base == .required || declaration.base == .optional {
                if let j = slice.sources.firstIndex(where: { $0.model == recipe.baseModel(ofSlice: i) }), !slice.sources[j].parameters.isEmpty {
                    throw at("slices[\(i)].sources[\(j)].parameters", "the base model's parameters are not used by \(method) (mergekit 0.1.5 ignores them); remove them")
                }
            }
            for (i, model) in recipe.models.enumerated() {
                if model.model == recipe.baseModel && (declaration.base == .required || declaration.base == .optional) && !model.parameters.isEmpty {
                    throw at("models[\(i)].parameters", "the base model's parameters are not used by \(method) (mergekit 0.1.5 ignores them); remove them")
                }
                for role in declaration.files where role.scope == .perInput && role.required {
                    if !model.files.contains(where: { $0.role == role.name }) && model.model != recipe.baseModel {
                        throw at("models[\(i)]", "\(method) needs '\(role.name)' for every model (\(role.help))")
                    }
                }
            }
            // mergekit's linear has no default weight: a recipe gives every model one.
            if method == AverageStrategy.declaration.identifier && !recipe.parameters.contains(where: { $0.name == "weight" }) {
                for (i, model) in recipe.models.enumerated() where !model.parameters.contains(where: { $0.name == "weight" }) {
                    throw at("models[\(i)]", "\(recipe.mergeMethod) needs a weight for every model (mergekit has no default); give parameters: {weight: …} here or under the top-level parameters")
                }
                for (i, slice) in recipe.slices.enumerated() where !slice.parameters.contains(where: { $0.name == "weight" }) {
                    for (j, source) in slice.sources.enumerated() where !source.parameters.contains(where: { $0.name == "weight" }) {
                        throw at("slices[\(i)].sources[\(j)]", "\(recipe.mergeMethod) needs a weight for every model (mergekit has no default); give parameters: {weight: …} here, in the slice's parameters or the top-level ones")
                    }
                }
                if let base = recipe.baseModel, recipe.slices.isEmpty, !recipe.models.contains(where: { $0.model == base }) {
                    throw at("base_model", "\(recipe.mergeMethod) merges the base like any model: list it under models with its weight")
                }
            }
            if !RecipeRunner.stacks(recipe) {
                for (i, slice) in recipe.slices.enumerated() {
                    let lengths = Set(slice.sources.map(\.layerRange.count))
                    if lengths.count > 1 {
                        throw at("slices[\(i)]", "every source of a slice merges the same number of layers (got \(slice.sources.map { "\($0.layerRange.count)" }.joined(separator: ", ")))")
                    }
                }
            }
        }
    }
}

extension RecipeParser {
    /// Reads and parses the recipe at `path` (`-`: standard input, named `<stdin>` in messages).
    public static func load(_ path: String) throws -> RecipeDocument {
        let bytes: [UInt8]
        let name: String
        if path == "-" {
            name = "<stdin>"
            bytes = try readStandardInput()
        } else {
            name = path
            guard pathKind(path) == .file else {
                throw WSAMergeError.missingInput(file: path, reason: pathKind(path) == .missing ? "no such recipe file" : "not a file")
            }
            let file = try ReadableFile(path: path)
            guard file.size <= maxBytes else { throw WSAMergeError.usage("\(path): a recipe is at most \(maxBytes >> 20) MiB") }
            bytes = try file.readBytes(at: 0, count: file.size)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw WSAMergeError.usage("\(name): the recipe is not UTF-8 text")
        }
        return try parse(text, file: name)
    }

    static let maxBytes = 16 << 20

    static func readStandardInput() throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw WSAMergeError.io(file: "<stdin>", reason: "cannot read: \(systemError(errno))")
            }
            if count == 0 { return bytes }
            bytes += chunk[..<count]
            guard bytes.count <= maxBytes else { throw WSAMergeError.usage("<stdin>: a recipe is at most \(maxBytes >> 20) MiB") }
        }
    }
}
