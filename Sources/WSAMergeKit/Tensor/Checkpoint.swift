/// A checkpoint: an ordered list of tensors plus string metadata. Headers only: tensor data stays
/// in the files, and each tensor's `TensorSource` streams it when asked.
// @unchecked: immutable after init; its sources are `Sendable` and `ReadableFile` is.
public final class Checkpoint: @unchecked Sendable {
    /// The path the user named (file, index or directory).
    public let path: String
    public let format: CheckpointFormat
    /// `__metadata__` (safetensors) or the index's `metadata` strings; empty for NumPy files.
    public let metadata: [String: String]
    /// Tensors in storage order.
    public let tensors: [TensorInfo]
    /// Where each tensor's bytes come from, in the order of `tensors`.
    public let sources: [any TensorSource]
    /// Every file this checkpoint reads (shards, archive).
    public let files: [ReadableFile]
    /// Values that are not tensors (PyTorch checkpoints: epoch numbers, hyper-parameters, …).
    public let nonTensors: [NonTensorLeaf]
    private let indexByName: [[UInt8]: Int]

    public init(path: String, format: CheckpointFormat, metadata: [String: String], sources: [any TensorSource],
                files: [ReadableFile], nonTensors: [NonTensorLeaf] = []) {
        self.nonTensors = nonTensors
        self.path = path
        self.format = format
        self.metadata = metadata
        self.sources = sources
        self.tensors = sources.map(\.tensor)
        self.files = files
        var index: [[UInt8]: Int] = [:]
        for (i, tensor) in tensors.enumerated() { index[Array(tensor.name.utf8)] = i }
        self.indexByName = index
    }

    /// The position of the tensor called `name` (names compare byte for byte, as safetensors does).
    public func index(of name: String) -> Int? { indexByName[Array(name.utf8)] }

    /// Total number of elements over all tensors.
    public var parameterCount: Int { tensors.reduce(0) { $0 &+ $1.elementCount } }

    /// A reader of tensor `index`'s bytes: C order, little-endian, from the start.
    public func reader(for index: Int) throws -> TensorReader {
        try TensorReader(sources[index])
    }

    /// Whether several of its tensors may be read at once (see `TensorSource.readsConcurrently`).
    public var readsTensorsInParallel: Bool { sources.allSatisfy(\.readsConcurrently) }

    /// Device/inode of every file read, to refuse writing over an input.
    public var identities: Set<FileIdentity> { Set(files.map(\.identity)) }
}
