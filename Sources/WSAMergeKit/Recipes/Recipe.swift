/// A merge recipe in mergekit's configuration format (the subset wsamerge runs), as typed values.
///
/// ```yaml
/// merge_method: ties
/// base_model: base.safetensors
/// models:
///   - model: a.safetensors
///     parameters: {weight: 1.0, density: [1, 0.7, 0.1]}
/// parameters: {normalize: true}
/// dtype: float16
/// ```
///
/// `render()` writes the normalised YAML (fixed key order, inputs as given), which
/// `RecipeParser` reads back to an equal recipe: the text recorded in every output.
public struct Recipe: Sendable, Equatable {
    /// One parameter as the recipe gives it.
    public struct Setting: Sendable, Equatable {
        public var name: String
        public var setting: ParameterSetting

        public init(_ name: String, _ setting: ParameterSetting) {
            self.name = name
            self.setting = setting
        }

        /// `settings` in front of `lower`, as mergekit reads a module's parameters before the
        /// top-level ones: a parameter in both is the first's, falling back to the second's
        /// where its filters match no tensor.
        static func layered(_ settings: [Setting], over lower: [Setting]) -> [Setting] {
            var result = lower
            for setting in settings {
                if let i = result.firstIndex(where: { $0.name == setting.name }) {
                    result[i].setting = setting.setting.fallingBack(to: result[i].setting)
                } else {
                    result.append(setting)
                }
            }
            return result
        }
    }

    /// A file the method reads besides the models, by role (`fisher` per model, `target_scope`
    /// for the merge).
    public struct File: Sendable, Equatable {
        public var role: String
        public var path: String

        public init(_ role: String, _ path: String) {
            self.role = role
            self.path = path
        }
    }

    /// One `metadata` key and its value.
    public struct MetadataEntry: Sendable, Equatable {
        public var key: String
        public var value: String

        public init(_ key: String, _ value: String) {
            self.key = key
            self.value = value
        }
    }

    /// An entry of `models`.
    public struct Model: Sendable, Equatable {
        public var model: String
        public var parameters: [Setting]
        /// Per-input files of the method (`fisher: F.safetensors`).
        public var files: [File]

        public init(_ model: String, parameters: [Setting] = [], files: [File] = []) {
            self.model = model
            self.parameters = parameters
            self.files = files
        }
    }

    /// One source of a slice: layers `layerRange` (end excluded) of `model`.
    public struct Source: Sendable, Equatable {
        public var model: String
        public var layerRange: Range<Int>
        /// Per-input parameters for this model within the slice (before the slice's and the
        /// top-level ones).
        public var parameters: [Setting]

        public init(_ model: String, layers: Range<Int>, parameters: [Setting] = []) {
            self.model = model
            self.layerRange = layers
            self.parameters = parameters
        }
    }

    /// An entry of `slices`: the layers it contributes, from each source.
    public struct Slice: Sendable, Equatable {
        public var sources: [Source]
        /// Parameters for every model within the slice (before the top-level ones).
        public var parameters: [Setting]
        /// The slice's own `base_model`, one of its sources (else the top-level one).
        public var baseModel: String?

        public init(_ sources: [Source], parameters: [Setting] = [], baseModel: String? = nil) {
            self.sources = sources
            self.parameters = parameters
            self.baseModel = baseModel
        }
    }

    /// `merge_method`, as written (an identifier or alias).
    public var mergeMethod: String
    public var baseModel: String?
    public var models: [Model] = []
    public var slices: [Slice] = []
    /// Top-level `parameters`.
    public var parameters: [Setting] = []
    /// Shared files of the method (`target_scope: scope.json`).
    public var files: [File] = []
    /// `dtype`: mergekit's compute dtype (wsamerge computes in float64); the output dtype when
    /// `outDType` is not given.
    public var dtype: DType?
    /// `out_dtype`.
    public var outDType: DType?
    /// `tokenizer_source` (only `base`).
    public var tokenizerSource: String?
    /// `chat_template`: `auto`, a template's name or a Jinja template (`ChatTemplate.resolve`).
    public var chatTemplate: String?
    /// wsamerge's own keys: tensor selection, tensors missing from some inputs, extra metadata.
    public var include: [String] = []
    public var exclude: [String] = []
    public var onMissing: OnMissing?
    /// Name prefixes removed from every model's tensors (`--strip-prefix`).
    public var stripPrefix: [String] = []
    public var metadata: [MetadataEntry] = []

    public init(mergeMethod: String) { self.mergeMethod = mergeMethod }

    /// The base of slice `i`: its own `base_model`, else the top-level one.
    public func baseModel(ofSlice i: Int) -> String? { slices[i].baseModel ?? baseModel }

    /// The output dtype the recipe asks for: `out_dtype`, else `dtype`, else each tensor keeps its own.
    public var outputDType: DType? { outDType ?? dtype }

    /// The top-level keys, in the order `render()` writes them.
    public static let keys = ["merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype", "out_dtype",
                              "tokenizer_source", "tokenizer", "chat_template", "include", "exclude", "on_missing", "strip_prefix", "metadata"]

    /// mergekit's dtype names (`torch.float16` …) and wsamerge's (`F16` …).
    public static func dtype(named name: String) -> DType? {
        switch name.lowercased() {
        case "float16", "half", "fp16", "f16", "torch.float16": .F16
        case "bfloat16", "bf16", "torch.bfloat16": .BF16
        case "float32", "float", "fp32", "f32", "torch.float32": .F32
        case "float64", "double", "fp64", "f64", "torch.float64": .F64
        default: nil
        }
    }

    /// The name a dtype is written with (mergekit's).
    public static func name(of dtype: DType) -> String {
        switch dtype {
        case .F16: "float16"
        case .BF16: "bfloat16"
        case .F32: "float32"
        case .F64: "float64"
        default: dtype.rawValue
        }
    }

    /// Refuses a recipe that lists a model twice, which a recipe file cannot say: the parser,
    /// like mergekit, refuses duplicate models (a command line may repeat an input to weight it).
    public func requireDistinctModels() throws {
        let names = models.map(\.model)
        if let twice = names.enumerated().first(where: { names[..<$0.offset].contains($0.element) })?.element {
            throw WSAMergeError.usage("'\(twice)' is an input twice, which a recipe cannot say (recipes, like mergekit, refuse duplicate models): weight it with --weights instead")
        }
    }

    // MARK: Rendering

    /// The recipe as normalised YAML: keys in a fixed order, each value in one spelling, models
    /// as given; numbers in their shortest round-trip form.
    public func render() -> String {
        var out = ""
        func line(_ indent: Int, _ text: String) { out += String(repeating: " ", count: indent) + text + "\n" }
        func settings(_ indent: Int, _ list: [Setting]) {
            for item in list {
                switch item.setting {
                case .filtered(let entries):
                    line(indent, YAMLText.key(item.name) + ":")
                    filtered(indent + 2, entries)
                default:
                    line(indent, YAMLText.key(item.name) + ": " + YAMLText.inline(item.setting))
                }
            }
        }
        func filtered(_ indent: Int, _ entries: [FilteredSetting]) {
            for entry in entries {
                var first = true
                func field(_ text: String) {
                    line(indent + (first ? 0 : 2), (first ? "- " : "") + text)
                    first = false
                }
                if let filter = entry.filter { field("filter: " + YAMLText.scalar(filter)) }
                if case .filtered(let nested) = entry.setting {
                    field("value:")
                    filtered(indent + 4, nested)
                } else {
                    field("value: " + YAMLText.inline(entry.setting))
                }
            }
        }
        line(0, "merge_method: " + YAMLText.scalar(mergeMethod))
        if let baseModel { line(0, "base_model: " + YAMLText.scalar(baseModel)) }
        if !models.isEmpty {
            line(0, "models:")
            for model in models {
                line(2, "- model: " + YAMLText.scalar(model.model))
                for file in model.files { line(4, YAMLText.key(file.role) + ": " + YAMLText.scalar(file.path)) }
                if !model.parameters.isEmpty {
                    line(4, "parameters:")
                    settings(6, model.parameters)
                }
            }
        }
        if !slices.isEmpty {
            line(0, "slices:")
            for slice in slices {
                line(2, "- sources:")
                for source in slice.sources {
                    line(6, "- model: " + YAMLText.scalar(source.model))
                    line(8, "layer_range: [\(source.layerRange.lowerBound), \(source.layerRange.upperBound)]")
                    if !source.parameters.isEmpty {
                        line(8, "parameters:")
                        settings(10, source.parameters)
                    }
                }
                if let baseModel = slice.baseModel { line(4, "base_model: " + YAMLText.scalar(baseModel)) }
                if !slice.parameters.isEmpty {
                    line(4, "parameters:")
                    settings(6, slice.parameters)
                }
            }
        }
        for file in files { line(0, YAMLText.key(file.role) + ": " + YAMLText.scalar(file.path)) }
        if !parameters.isEmpty {
            line(0, "parameters:")
            settings(2, parameters)
        }
        if let dtype { line(0, "dtype: " + Self.name(of: dtype)) }
        if let outDType { line(0, "out_dtype: " + Self.name(of: outDType)) }
        if let tokenizerSource { line(0, "tokenizer_source: " + YAMLText.scalar(tokenizerSource)) }
        if let chatTemplate { line(0, "chat_template: " + YAMLText.scalar(chatTemplate)) }
        if !include.isEmpty { line(0, "include: " + YAMLText.list(include)) }
        if !exclude.isEmpty { line(0, "exclude: " + YAMLText.list(exclude)) }
        if let onMissing { line(0, "on_missing: " + onMissing.rawValue) }
        if !stripPrefix.isEmpty { line(0, "strip_prefix: " + YAMLText.list(stripPrefix)) }
        if !metadata.isEmpty {
            line(0, "metadata:")
            for entry in metadata { line(2, YAMLText.scalar(entry.key) + ": " + YAMLText.scalar(entry.value)) }
        }
        return out
    }
}

/// YAML spellings of scalars: plain where that reads back as the same string, else double-quoted.
enum YAMLText {
    /// Words YAML 1.1 and 1.2 read as booleans or null.
    private static let reserved: Set<String> = ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
                                                ".inf", ".nan", "+.inf", "-.inf"]

    static func scalar(_ text: String) -> String {
        plain(text) ? text : quoted(text)
    }

    /// A mapping key (parameter and file-role names are identifiers).
    static func key(_ text: String) -> String { scalar(text) }

    static func plain(_ text: String) -> Bool {
        func letterOrDigit(_ c: Unicode.Scalar) -> Bool {
            ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || (c.value >= 0x80 && c.properties.isAlphabetic)
        }
        guard let first = text.unicodeScalars.first,
              text.unicodeScalars.allSatisfy({ letterOrDigit($0) || "_./+-=()@".unicodeScalars.contains($0) }),
              letterOrDigit(first) || "_./".unicodeScalars.contains(first),
              !reserved.contains(text.lowercased()) else { return false }
        // Whatever a resolver could take for a number (1, 0.5, 1e3, 0x1f, 1_000, 1:30, 2024-01-01) is quoted.
        if ("0"..."9").contains(first) || first == "." {
            if text.unicodeScalars.allSatisfy({ ("0"..."9").contains($0) || "._+-:eExXoObBaAcCdDfF".unicodeScalars.contains($0) }) { return false }
        }
        return true
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for c in text.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if c.value < 0x20 || c.value == 0x7F {
                    out += "\\x" + (c.value < 16 ? "0" : "") + String(c.value, radix: 16, uppercase: true)
                } else if (0x80...0x9F).contains(c.value) || c.value == 0x2028 || c.value == 0x2029 || c.value == 0xFEFF {
                    // C1 controls, YAML's other line breaks (NEL, LS, PS) and the byte-order mark:
                    // written raw, a reader would fold or drop them.
                    let hex = String(c.value, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out + "\""
    }

    static func list(_ items: [String]) -> String { "[" + items.map(quoted).joined(separator: ", ") + "]" }

    /// A number in its shortest round-trip form, with a `.` before any exponent (YAML 1.1 reads
    /// `1e-06` as a string): `1`, `0.5`, `1.0e-06`.
    static func number(_ x: Double) -> String {
        if x.rounded() == x && x.magnitude < 1e15 { return String(Int(x)) }
        var text = "\(x)"
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }), !text[..<e].contains(".") {
            text.insert(contentsOf: ".0", at: e)
        }
        return text
    }

    static func value(_ value: ParameterValue) -> String {
        switch value {
        case .number(let x): number(x)
        case .integer(let n): String(n)
        case .bool(let b): b ? "true" : "false"
        case .string(let s): scalar(s)
        }
    }

    /// A value or gradient on one line (filters need a block).
    static func inline(_ setting: ParameterSetting) -> String {
        switch setting {
        case .value(let v): value(v)
        case .gradient(let values): "[" + values.map(number).joined(separator: ", ") + "]"
        case .filtered: preconditionFailure("filtered settings are written as a block")
        case .sliced: preconditionFailure("slice settings are written in their slices")
        }
    }
}
