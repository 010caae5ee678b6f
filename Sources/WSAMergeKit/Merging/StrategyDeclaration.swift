/// What a merge method is, takes and reads, declared once: the command line, `wsamerge
/// strategies`, the man page, recipe validation, the report and the output metadata are all
/// generated from it.
public struct StrategyDeclaration: Sendable {
    /// The `--strategy` value (mergekit's name where mergekit has the method).
    public let identifier: String
    /// Other names accepted for it (`linear` for `average`).
    public let aliases: [String]
    /// One line for `wsamerge strategies` and `--help`.
    public let summary: String
    /// What `--base` is to this method.
    public let base: BaseRole
    /// How many inputs besides the base it merges.
    public let inputs: ClosedRange<Int>
    /// Files it reads besides the models (Fisher checkpoints, a target scope).
    public let files: [FileRole]
    public let parameters: [ParameterDeclaration]
    /// Whether the `weight`s are normalised to sum 1 (average, fisher, wsa), so reports show
    /// the weights in effect.
    public let normalizesWeights: Bool

    public init(identifier: String, aliases: [String] = [], summary: String, base: BaseRole,
                inputs: ClosedRange<Int> = 1...Int.max, files: [FileRole] = [], parameters: [ParameterDeclaration],
                normalizesWeights: Bool = false) {
        self.normalizesWeights = normalizesWeights
        self.identifier = identifier
        self.aliases = aliases
        self.summary = summary
        self.base = base
        self.inputs = inputs
        self.files = files
        self.parameters = parameters
    }

    /// The parameter called `name`.
    public func parameter(_ name: String) -> ParameterDeclaration? { parameters.first { $0.name == name } }

    /// Why `count` inputs (besides the base, for a method that has one) are the wrong number for
    /// it, or nil when they are not.
    public func inputCountProblem(_ count: Int) -> String? {
        guard !inputs.contains(count) else { return nil }
        let wanted = inputs.upperBound == Int.max ? "at least \(inputs.lowerBound)"
            : inputs.lowerBound == inputs.upperBound ? "exactly \(inputs.lowerBound)" : "\(inputs.lowerBound) to \(inputs.upperBound)"
        let besides = base == .required || base == .optional ? " besides the base" : ""
        return "\(identifier) merges \(wanted) model(s)\(besides); got \(count)"
    }

    /// The declaration as `wsamerge strategies` lists it.
    public var json: JSON {
        .object([
            ("identifier", .string(identifier)),
            ("aliases", .array(aliases.map { .string($0) })),
            ("summary", .string(summary)),
            ("base", .string(base.rawValue)),
            ("inputs", .object([("min", .int(inputs.lowerBound)),
                                ("max", inputs.upperBound == Int.max ? .null : .int(inputs.upperBound))])),
            ("files", .array(files.map(\.json))),
            ("parameters", .array(parameters.map(\.json))),
        ])
    }
}

/// What a method does with `--base`.
public enum BaseRole: String, Sendable {
    /// The method needs a base (task-vector methods).
    case required
    /// A base changes what the method does (task vectors instead of tensors).
    case optional
    /// The method has no use for one; giving it is an error.
    case none
    /// A base is merged like any other input (it is input 0, with its own weight).
    case input
}

/// A file a method reads besides the models.
public struct FileRole: Sendable {
    public enum Scope: String, Sendable {
        /// One checkpoint per input, in input order, with the same tensors (Fisher values).
        case perInput = "per_input"
        /// One file for the whole merge (a target scope document).
        case shared
    }

    public let name: String
    public let scope: Scope
    public let required: Bool
    public let help: String

    public init(name: String, scope: Scope, required: Bool, help: String) {
        self.name = name
        self.scope = scope
        self.required = required
        self.help = help
    }

    var json: JSON {
        .object([("name", .string(name)), ("scope", .string(scope.rawValue)), ("required", .bool(required)),
                 ("help", .string(help))])
    }
}

/// One parameter of a method.
public struct ParameterDeclaration: Sendable {
    public enum Kind: Sendable, Equatable {
        case number
        case integer
        case bool
        case string
        case choice([String])

        var name: String {
            switch self {
            case .number: "number"
            case .integer: "integer"
            case .bool: "bool"
            case .string: "string"
            case .choice: "choice"
            }
        }
    }

    public enum Scope: String, Sendable {
        /// One value for the merge (it may still vary by tensor in a recipe).
        case shared
        /// One value per input besides the base.
        case perInput = "per_input"
    }

    public let name: String
    public let kind: Kind
    public let scope: Scope
    /// `nil`: required.
    public let defaultValue: ParameterValue?
    public let help: String

    public init(_ name: String, _ kind: Kind, _ scope: Scope, default defaultValue: ParameterValue?, help: String) {
        self.name = name
        self.kind = kind
        self.scope = scope
        self.defaultValue = defaultValue
        self.help = help
    }

    var json: JSON {
        var fields: [(String, JSON)] = [("name", .string(name)), ("type", .string(kind.name)), ("scope", .string(scope.rawValue)),
                                        ("default", defaultValue?.json ?? .null), ("required", .bool(defaultValue == nil))]
        if case .choice(let choices) = kind { fields.append(("choices", .array(choices.map { .string($0) }))) }
        fields.append(("help", .string(help)))
        return .object(fields)
    }

    /// `value` checked against the kind: integers are whole numbers, choices one of the list.
    func check(_ value: ParameterValue) -> ParameterValue? {
        switch (kind, value) {
        case (.number, .number(let x)) where x.isFinite: return value
        case (.integer, .number(let x)) where x.isFinite && x.rounded() == x && x.magnitude < 0x1p53: return .integer(Int(x))
        case (.integer, .integer): return value
        case (.number, .integer(let n)): return .number(Double(n))
        case (.bool, .bool): return value
        case (.string, .string): return value
        case (.choice(let choices), .string(let s)) where choices.contains(s): return value
        default: return nil
        }
    }

    /// What the kind accepts, for messages.
    var expectation: String {
        switch kind {
        case .number: "a finite number"
        case .integer: "a whole number"
        case .bool: "true or false"
        case .string: "a string"
        case .choice(let choices): "one of " + choices.joined(separator: ", ")
        }
    }
}

/// A parameter's value.
public enum ParameterValue: Sendable, Equatable, CustomStringConvertible {
    case number(Double)
    /// A whole number given as one (seeds need all 64 bits).
    case integer(Int)
    case bool(Bool)
    case string(String)

    /// A command-line word read as `kind` wants it: `true`/`false`, a number, else a string.
    public init(parsing text: String, as kind: ParameterDeclaration.Kind) {
        switch kind {
        case .bool:
            switch text.lowercased() {
            case "true", "yes", "1": self = .bool(true)
            case "false", "no", "0": self = .bool(false)
            default: self = .string(text)
            }
        case .number, .integer:
            let digits = text.filter { $0 != " " && $0 != "_" }
            if kind == .integer, let n = Int(digits) { self = .integer(n) }
            else if let x = Double(digits) { self = .number(x) } else { self = .string(text) }
        case .string, .choice:
            self = .string(text)
        }
    }

    public var number: Double? {
        switch self {
        case .number(let x): x
        case .integer(let n): Double(n)
        default: nil
        }
    }
    public var integer: Int? {
        switch self {
        case .integer(let n): n
        case .number(let x) where x.rounded() == x && x.magnitude < 0x1p53: Int(x)
        default: nil
        }
    }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var string: String? { if case .string(let s) = self { s } else { nil } }

    public var json: JSON {
        switch self {
        case .number(let x): x.rounded() == x && x.magnitude < 1e15 ? .int(Int(x)) : .double(x)
        case .integer(let n): .int(n)
        case .bool(let b): .bool(b)
        case .string(let s): .string(s)
        }
    }

    public var description: String {
        switch self {
        case .number(let x): x.rounded() == x && x.magnitude < 1e15 ? String(Int(x)) : "\(x)"
        case .integer(let n): String(n)
        case .bool(let b): b ? "true" : "false"
        case .string(let s): s
        }
    }
}
