/// The one error type of wsamerge. Every refusal carries the file it concerns, the tensor where
/// there is one, and maps to a sysexits exit code.
public enum WSAMergeError: Error, Equatable, Sendable {
    /// Bad command-line usage (exit 64).
    case usage(String)
    /// Malformed or incompatible input data (exit 65).
    case malformed(file: String, tensor: String? = nil, reason: String)
    /// An input that does not exist or cannot be opened (exit 66).
    case missingInput(file: String, reason: String)
    /// The output cannot be created (exit 73).
    case cannotCreate(file: String, reason: String)
    /// A read or write failed part way (exit 74).
    case io(file: String, reason: String)
    /// An error with what the user can do about it; the command line words the hint with its
    /// own option names.
    indirect case hinted(WSAMergeError, Hint)

    /// What a user can do about an error, named without any command-line spelling.
    public enum Hint: Sendable, Equatable {
        /// Merge only the common tensors, or each over the inputs that hold it.
        case onMissing
        /// Merge only the common tensors (their union is refused: the base lacks some).
        case commonOnly
        /// Replace the existing output.
        case force
        /// Give (or change) the method's parameter.
        case parameter(String)
        /// Give the method's extra file of this role (one per input for a per-input role).
        case file(String)
        /// Choose a float output dtype.
        case outputDType
        /// Remove this leading prefix from the tensor names of the model that has it.
        case stripPrefix(String)
        /// Select a single tensor (a conversion can; a merge writes every tensor of its inputs).
        case oneTensor

        /// The hint in words, for callers without options of their own.
        public var text: String {
            switch self {
            case .onMissing: "merge the common tensors only, or their union"
            case .commonOnly: "merge the common tensors only"
            case .force: "allow replacing it"
            case .parameter(let name): "set parameter '\(name)'"
            case .file(let role): "give the \(role) file(s)"
            case .outputDType: "choose F64, F32, F16 or BF16 as output dtype"
            case .stripPrefix(let prefix): "the names differ by the prefix '\(prefix)'"
            case .oneTensor: "select one tensor, or write a format that holds several"
            }
        }
    }

    /// The sysexits code for this error.
    public var exitCode: Int32 {
        switch self {
        case .usage: 64
        case .malformed: 65
        case .missingInput: 66
        case .cannotCreate: 73
        case .io: 74
        case .hinted(let error, _): error.exitCode
        }
    }

    /// The same error, naming `tensor` if it does not name one yet.
    func naming(tensor name: String) -> WSAMergeError {
        if case .malformed(let file, nil, let reason) = self {
            return .malformed(file: file, tensor: name, reason: reason)
        }
        if case .hinted(let error, let hint) = self { return .hinted(error.naming(tensor: name), hint) }
        return self
    }
}

extension WSAMergeError: CustomStringConvertible {
    /// `<file>: <tensor>: <what>`, the text after `wsamerge: error: `.
    public var description: String {
        switch self {
        case .usage(let message):
            return message
        case .malformed(let file, let tensor, let reason):
            if let tensor { return "\(file): tensor '\(shortenMiddle(tensor, width: 200))': \(reason)" }
            return "\(file): \(reason)"
        case .missingInput(let file, let reason),
             .cannotCreate(let file, let reason),
             .io(let file, let reason):
            return "\(file): \(reason)"
        case .hinted(let error, let hint):
            return "\(error.description) (\(hint.text))"
        }
    }
}
