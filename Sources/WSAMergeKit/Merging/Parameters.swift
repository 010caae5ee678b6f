/// How one parameter's value is given: a plain value, a gradient over the layers, or a list of
/// tensor-name filters (recipes nest them).
public indirect enum ParameterSetting: Sendable, Equatable {
    case value(ParameterValue)
    /// Numbers interpolated piecewise-linearly over the tensor's layer position `t` ∈ [0, 1]:
    /// ```
    /// x = t·(len − 1),  i = ⌊x⌋,  f = x − i,  value = v[i]·(1 − f) + v[i+1]·f   (v[len−1] at t = 1)
    /// ```
    case gradient([Double])
    /// The first entry whose filter is a substring of the tensor's name; an entry without a
    /// filter, or with the filter `*` (as in mergekit), matches every tensor (the fallback).
    case filtered([FilteredSetting])
    /// A recipe's slices: the entry whose slice holds the tensor, its settings tried in order
    /// (the first that gives a value), as mergekit reads a slice source's, then the slice's,
    /// then the top-level parameters.
    case sliced([SliceSetting])

    /// The value for the tensor at `position`, or nil when no filter matches.
    func value(at position: TensorPosition) -> ParameterValue? {
        switch self {
        case .value(let value):
            return value
        case .gradient(let values):
            guard let last = values.last else { return nil }
            guard values.count > 1 else { return .number(last) }
            let x = Swift.min(Swift.max(position.t, 0), 1) * Double(values.count - 1)
            let i = Int(x.rounded(.down))
            if i >= values.count - 1 { return .number(last) }
            let f = x - Double(i)
            return .number(values[i] * (1 - f) + values[i + 1] * f)
        case .filtered(let entries):
            for entry in entries where entry.matches(position.name) {
                return entry.setting.value(at: position)
            }
            return nil
        case .sliced(let entries):
            for entry in entries where entry.holds(position.name) {
                let own = entry.inputName(of: position.name)
                return entry.settings.lazy.compactMap { $0.value(at: TensorPosition(name: own, t: position.t)) }.first
            }
            return nil
        }
    }

    /// This setting, and where it gives no value (filters that match no tensor) `fallback`, as one
    /// filtered list: `[filtered entries…, fallback's entries (or {value: fallback})]`.
    func fallingBack(to fallback: ParameterSetting) -> ParameterSetting {
        guard case .filtered(let entries) = self else { return self }
        if case .filtered(let more) = fallback { return .filtered(entries + more) }
        return .filtered(entries + [FilteredSetting(filter: nil, setting: fallback)])
    }

    /// Every plain value the setting can produce (gradient entries as numbers), for type checks.
    var leaves: [ParameterValue] {
        switch self {
        case .value(let value): [value]
        case .gradient(let values): values.map { .number($0) }
        case .filtered(let entries): entries.flatMap(\.setting.leaves)
        case .sliced(let entries): entries.flatMap { $0.settings.flatMap(\.leaves) }
        }
    }

    /// Whether the value is the same for every tensor.
    public var isConstant: Bool { if case .value = self { true } else { false } }

    /// The setting as JSON (provenance and reports): a value, a list of numbers, or
    /// `[{"filter": …, "value": …}]`.
    public var json: JSON {
        switch self {
        case .value(let value): value.json
        case .gradient(let values): .array(values.map { .double($0) })
        case .filtered(let entries):
            .array(entries.map { entry in
                .object((entry.filter.map { [("filter", JSON.string($0))] } ?? []) + [("value", entry.setting.json)])
            })
        case .sliced(let entries):
            .array(entries.map { entry in
                .object([("layers", .array([.int(entry.layers.lowerBound), .int(entry.layers.upperBound)]))]
                        + (entry.inputLayers.map { [("input_layers", JSON.array([.int($0.lowerBound), .int($0.upperBound)]))] } ?? [])
                        + [("values", .array(entry.settings.map(\.json)))])
            })
        }
    }
}

/// One slice of a `.sliced` setting: its output layers, and whether it is the first slice (it
/// holds the tensors before the layers) or the last (those after them).
public struct SliceSetting: Sendable, Equatable {
    public var layers: Range<Int>
    public var first: Bool
    public var last: Bool
    /// For an input's setting, the layers its model gives the slice: filters then match the
    /// model's own tensor names (as mergekit matches a per-input parameter's). Nil: the output's.
    public var inputLayers: Range<Int>?
    /// Tried in order; the first that gives a value for the tensor is its value.
    public var settings: [ParameterSetting]

    public init(layers: Range<Int>, first: Bool, last: Bool, inputLayers: Range<Int>? = nil, settings: [ParameterSetting]) {
        self.layers = layers
        self.first = first
        self.last = last
        self.inputLayers = inputLayers
        self.settings = settings
    }

    /// Whether the slice holds the output tensor called `name` (see `LayerStack.stack`).
    func holds(_ name: String) -> Bool {
        if let layer = LayerGroups.layerIndex(of: name) { return layers.contains(layer) }
        return LayerGroups.precedesTheLayers(name) ? first : last
    }

    /// The name filters match for output tensor `name`: its name in the input's model.
    func inputName(of name: String) -> String {
        guard let inputLayers, let layer = LayerGroups.layerIndex(of: name) else { return name }
        return LayerGroups.renaming(name, layer: inputLayers.lowerBound + layer - layers.lowerBound)
    }
}

/// One entry of a filtered setting.
public struct FilteredSetting: Sendable, Equatable {
    /// A substring of the tensor name; `nil` and `*` match every tensor.
    public var filter: String?
    public var setting: ParameterSetting

    /// Whether the entry applies to tensor `name`.
    func matches(_ name: String) -> Bool {
        guard let filter, filter != "*" else { return true }
        return name.utf8.contains(substring: filter.utf8)
    }

    public init(filter: String?, setting: ParameterSetting) {
        self.filter = filter
        self.setting = setting
    }
}

/// Where a tensor sits in the model, for settings that vary by tensor.
public struct TensorPosition: Sendable, Equatable {
    public let name: String
    /// `i/(L−1)` for the i-th of the model's L layers (1 when there is one layer); 0 for tensors
    /// outside the layers (embeddings, final norm, head), as mergekit evaluates gradients.
    public let t: Double

    public init(name: String, t: Double) {
        self.name = name
        self.t = t
    }
}

/// The parameter values a user gave, before they are checked against a method.
public struct ParameterSettings: Sendable, Equatable {
    /// Settings for the whole merge (for a per-input parameter: every input's value).
    public var shared: [(name: String, setting: ParameterSetting)] = []
    /// Settings of per-input parameters by input (inputs besides the base, in order); `nil`
    /// where an input has none of its own. They take precedence over `shared`.
    public var perInput: [(name: String, settings: [ParameterSetting?])] = []
    /// Parameters whose declared default does not apply: a tensor no setting gives a value for
    /// is an error (a recipe's `linear` weight, which mergekit requires).
    public var withoutDefault: Set<String> = []

    public init() {}

    /// Sets `name` for the whole merge, replacing an earlier setting.
    public mutating func set(_ name: String, _ setting: ParameterSetting) {
        shared.removeAll { $0.name == name }
        shared.append((name, setting))
    }

    /// Sets `name` input by input, replacing an earlier setting.
    public mutating func set(_ name: String, perInput settings: [ParameterSetting?]) {
        perInput.removeAll { $0.name == name }
        perInput.append((name, settings))
    }

    /// Sets `name` from command-line words: one word for the whole merge, or one word per input
    /// for a per-input parameter. Words are read as the declared type wants them. A later
    /// assignment replaces an earlier one, per input or not (`--weights 1,2 --param weight=0` is
    /// 0 for every input).
    public mutating func assign(_ name: String, words: [String], for declaration: StrategyDeclaration) throws {
        let method = declaration.identifier
        guard let parameter = declaration.parameter(name) else {
            let known = declaration.parameters.map(\.name)
            throw WSAMergeError.usage(known.isEmpty ? "\(method) takes no parameters (got '\(name)')"
                                                    : "\(method) has no parameter '\(name)' (its parameters: \(known.joined(separator: ", ")))")
        }
        let values = words.map { ParameterSetting.value(ParameterValue(parsing: $0, as: parameter.kind)) }
        if values.count == 1 {
            perInput.removeAll { $0.name == name }
            set(name, values[0])
        } else {
            guard parameter.scope == .perInput else {
                throw WSAMergeError.usage("\(method): parameter '\(name)' is shared by all inputs; give it one value")
            }
            set(name, perInput: values)
        }
    }

    /// Every parameter name given, in order.
    public var names: [String] { shared.map(\.name) + perInput.map(\.name).filter { name in !shared.contains { $0.name == name } } }

    public static func == (a: ParameterSettings, b: ParameterSettings) -> Bool {
        a.shared.map(\.name) == b.shared.map(\.name) && a.shared.map(\.setting) == b.shared.map(\.setting)
            && a.perInput.map(\.name) == b.perInput.map(\.name) && a.perInput.map(\.settings) == b.perInput.map(\.settings)
            && a.withoutDefault == b.withoutDefault
    }
}

/// A method's parameters checked against its declaration, answering "what is parameter P of
/// input i for tensor T?" with precedence per input > whole merge > the method's default.
public struct ResolvedParameters: Sendable {
    public let declaration: StrategyDeclaration
    public let settings: ParameterSettings
    /// Inputs besides the base.
    public let inputCount: Int
    /// The inputs as the user named them (for messages; may be empty).
    public let inputNames: [String]
    /// Position `t` of each layer index, from the plan's tensor names.
    private let layerPositions: [Int: Double]

    /// Checks every setting against the declaration: unknown names, scope, per-input counts and
    /// the type of every value. `layerPositions` replaces the positions read from `tensorNames`;
    /// `inputNames` name the inputs in messages.
    public init(_ declaration: StrategyDeclaration, settings: ParameterSettings, inputCount: Int, inputNames: [String] = [],
                tensorNames: [String] = [], layerPositions: [Int: Double]? = nil) throws {
        let method = declaration.identifier
        func unknown(_ name: String) -> WSAMergeError {
            let known = declaration.parameters.map(\.name)
            return .usage(known.isEmpty ? "\(method) takes no parameters (got '\(name)')"
                                        : "\(method) has no parameter '\(name)' (its parameters: \(known.joined(separator: ", ")))")
        }
        func check(_ parameter: ParameterDeclaration, _ setting: ParameterSetting) throws {
            for leaf in setting.leaves where parameter.check(leaf) == nil {
                throw WSAMergeError.usage("\(method): parameter '\(parameter.name)' expects \(parameter.expectation), got '\(leaf)'")
            }
        }
        for (name, setting) in settings.shared {
            guard let parameter = declaration.parameter(name) else { throw unknown(name) }
            try check(parameter, setting)
        }
        for (name, perInput) in settings.perInput {
            guard let parameter = declaration.parameter(name) else { throw unknown(name) }
            guard parameter.scope == .perInput else {
                throw WSAMergeError.usage("\(method): parameter '\(name)' is shared by all inputs; give it one value")
            }
            guard perInput.count == inputCount else {
                throw WSAMergeError.hinted(.usage("\(method): parameter '\(name)' has \(perInput.count) values for \(inputCount) inputs"),
                                           .parameter(name))
            }
            for setting in perInput.compactMap({ $0 }) { try check(parameter, setting) }
        }
        self.declaration = declaration
        self.settings = settings
        self.inputCount = inputCount
        self.inputNames = inputNames
        let layers = Set(tensorNames.compactMap { LayerGroups.layerIndex(of: $0) }).sorted()
        var positions: [Int: Double] = [:]
        for (rank, layer) in layers.enumerated() {
            positions[layer] = layers.count > 1 ? Double(rank) / Double(layers.count - 1) : 1
        }
        self.layerPositions = layerPositions ?? positions
    }

    /// The position of the tensor called `name`.
    public func position(of name: String) -> TensorPosition {
        TensorPosition(name: name, t: LayerGroups.layerIndex(of: name).flatMap { layerPositions[$0] } ?? 0)
    }

    /// Refuses, before anything is read in bulk, a required parameter that some merged tensor
    /// (or some input of it) has no value for, so no method checks its own.
    func requireEverywhere(_ plan: MergePlan) throws {
        for parameter in declaration.parameters where parameter.defaultValue == nil || settings.withoutDefault.contains(parameter.name) {
            for item in plan.items where item.action == .merge {
                if parameter.scope == .shared {
                    _ = try value(parameter.name, tensor: item.name)
                } else {
                    for source in item.sources { _ = try value(parameter.name, input: source.input, tensor: item.name) }
                }
            }
        }
    }

    /// Parameter `name` (of `input`, for a per-input parameter) for the tensor called `tensor`.
    public func value(_ name: String, input: Int? = nil, tensor: String) throws -> ParameterValue {
        let method = declaration.identifier
        guard let parameter = declaration.parameter(name) else {
            preconditionFailure("\(method) reads parameter '\(name)' it does not declare")
        }
        let position = position(of: tensor)
        if let input, let own = settings.perInput.first(where: { $0.name == name })?.settings[input],
           let value = own.value(at: position) {
            return parameter.check(value) ?? value
        }
        if let shared = settings.shared.first(where: { $0.name == name })?.setting, let value = shared.value(at: position) {
            return parameter.check(value) ?? value
        }
        if let value = parameter.defaultValue, !settings.withoutDefault.contains(name) { return value }
        let whose = input.map { " for input \($0 + 1)" + (inputNames.indices.contains($0) ? " (\(inputNames[$0]))" : "") } ?? ""
        throw WSAMergeError.hinted(.usage("\(method) needs parameter '\(name)'\(whose) (tensor '\(tensor)')"), .parameter(name))
    }

    public func number(_ name: String, input: Int? = nil, tensor: String) throws -> Double {
        try value(name, input: input, tensor: tensor).number!
    }

    public func integer(_ name: String, tensor: String) throws -> Int {
        try value(name, tensor: tensor).integer!
    }

    public func bool(_ name: String, tensor: String) throws -> Bool {
        try value(name, tensor: tensor).bool!
    }

    public func string(_ name: String, tensor: String) throws -> String {
        try value(name, tensor: tensor).string!
    }

    /// A per-input number for every input, in input order.
    public func numbers(_ name: String, tensor: String) throws -> [Double] {
        try (0..<inputCount).map { try number(name, input: $0, tensor: tensor) }
    }

    /// The settings as JSON, for provenance and the report: every given parameter, then the
    /// defaults of the others.
    public var json: JSON {
        var fields: [(String, JSON)] = []
        for parameter in declaration.parameters {
            if let own = settings.perInput.first(where: { $0.name == parameter.name }) {
                let shared = settings.shared.first { $0.name == parameter.name }?.setting
                fields.append((parameter.name, .array(own.settings.map { ($0 ?? shared)?.json ?? parameter.defaultValue?.json ?? .null })))
            } else if let shared = settings.shared.first(where: { $0.name == parameter.name }) {
                fields.append((parameter.name, shared.setting.json))
            } else if let value = parameter.defaultValue {
                fields.append((parameter.name, value.json))
            }
        }
        return .object(fields)
    }
}

extension Collection where Element == UInt8 {
    /// Whether `needle` occurs in these bytes (names are compared byte for byte, as safetensors does).
    func contains<C: Collection>(substring needle: C) -> Bool where C.Element == UInt8 {
        guard !needle.isEmpty else { return true }
        let hay = Array(self), pin = Array(needle)
        guard pin.count <= hay.count else { return false }
        for start in 0...(hay.count - pin.count) where hay[start] == pin[0] {
            if hay[start..<(start + pin.count)].elementsEqual(pin) { return true }
        }
        return false
    }
}
