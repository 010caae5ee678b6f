/// A tensor's identity and size: what a header says, with every number validated.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Product of `shape` (1 for a scalar).
    public let elementCount: Int
    /// `elementCount × dtype` size in bytes.
    public let byteCount: Int
    /// Most dimensions a tensor may have (numpy's own limit).
    public static let maxRank = 64

    /// Validates `shape` against `dtype` with checked arithmetic.
    ///
    /// - Throws: `.malformed` naming the tensor when the size overflows or is not whole bytes.
    public init(name: String, dtype: DType, shape: [Int], file: String) throws {
        guard shape.count <= Self.maxRank else {
            throw WSAMergeError.malformed(file: file, tensor: name, reason: "shape has \(shape.count) dimensions; at most \(Self.maxRank) are supported (numpy's limit)")
        }
        guard let count = WSAMergeKit.elementCount(of: shape) else {
            throw WSAMergeError.malformed(file: file, tensor: name, reason: "shape \(shape) is negative or overflows")
        }
        guard let bytes = dtype.byteCount(elements: count) else {
            throw WSAMergeError.malformed(file: file, tensor: name, reason: "shape \(shape) of \(dtype.rawValue) is not a whole number of bytes or overflows")
        }
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.elementCount = count
        self.byteCount = bytes
    }
}

/// The container a checkpoint was read from.
public enum CheckpointFormat: String, Sendable {
    case safetensors
    case shardedSafetensors = "safetensors-sharded"
    case npy
    case npz
    case pytorch
    case shardedPyTorch = "pytorch-sharded"
}
