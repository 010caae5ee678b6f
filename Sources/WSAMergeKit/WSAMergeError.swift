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

    /// The sysexits code for this error.
    public var exitCode: Int32 {
        switch self {
        case .usage: 64
        case .malformed: 65
        case .missingInput: 66
        case .cannotCreate: 73
        case .io: 74
        }
    }

    /// The same error, naming `tensor` if it does not name one yet.
    func naming(tensor name: String) -> WSAMergeError {
        if case .malformed(let file, nil, let reason) = self {
            return .malformed(file: file, tensor: name, reason: reason)
        }
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
        }
    }
}
