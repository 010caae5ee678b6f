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
    /// The sentence-transformers modules whose weights are part of this model directory, as
    /// sub-folder names (`2_Dense`); their tensors are named `2_Dense.<name>`.
    public let modules: [String]
    private let indexByName: [ByteKey: Int]

    public init(path: String, format: CheckpointFormat, metadata: [String: String], sources: [any TensorSource],
                files: [ReadableFile], nonTensors: [NonTensorLeaf] = [], modules: [String] = []) {
        self.nonTensors = nonTensors
        self.modules = modules
        self.path = path
        self.format = format
        self.metadata = metadata
        self.sources = sources
        self.tensors = sources.map(\.tensor)
        self.files = files
        var index: [ByteKey: Int] = [:]
        for (i, tensor) in tensors.enumerated() { index[ByteKey(tensor.name)] = i }
        self.indexByName = index
    }

    /// The position of the tensor called `name` (names compare byte for byte, as safetensors does).
    public func index(of name: String) -> Int? { indexByName[ByteKey(name)] }

    /// A reader of tensor `index`'s bytes: C order, little-endian, from the start.
    public func reader(for index: Int) throws -> TensorReader {
        try TensorReader(sources[index])
    }

    /// A reader of tensor `index`'s elements in any order (`TensorSource.makeStreamInAnyOrder`),
    /// for passes whose result does not depend on it.
    public func readerInAnyOrder(for index: Int) throws -> TensorReader {
        try TensorReader(sources[index], anyOrder: true)
    }

    /// Whether several of its tensors may be read at once (see `TensorSource.readsConcurrently`).
    public var readsTensorsInParallel: Bool { sources.allSatisfy(\.readsConcurrently) }

    /// Device/inode of every file read, to refuse writing over an input.
    public var identities: Set<FileIdentity> { Set(files.map(\.identity)) }
}

extension Checkpoint {
    /// The same checkpoint with a leading name prefix removed from every tensor that has one of
    /// `prefixes` (the first that matches), e.g. `state_dict.`, `module.` or `0.auto_model.`.
    /// Refuses names that the stripping makes collide.
    public func stripping(_ prefixes: [String]) throws -> Checkpoint {
        guard !prefixes.isEmpty else { return self }
        var seen = Set<[UInt8]>()
        let renamed: [any TensorSource] = try sources.map { source in
            let name = source.tensor.name
            var stripped = name
            if let prefix = prefixes.first(where: { !$0.isEmpty && name.utf8.starts(with: $0.utf8) && name.utf8.count > $0.utf8.count }) {
                stripped = String(decoding: name.utf8.dropFirst(prefix.utf8.count), as: UTF8.self)
            }
            guard seen.insert(Array(stripped.utf8)).inserted else {
                throw WSAMergeError.malformed(file: path, tensor: name, reason: "removing the prefix gives the name '\(stripped)' a second time")
            }
            guard stripped != name else { return source }
            return RenamedSource(source, tensor: try TensorInfo(name: stripped, dtype: source.tensor.dtype,
                                                                           shape: source.tensor.shape, file: path))
        }
        return Checkpoint(path: path, format: format, metadata: metadata, sources: renamed, files: files, nonTensors: nonTensors,
                          modules: modules)
    }
}

/// Another source's bytes under a new tensor name.
struct RenamedSource: TensorSource {
    let original: any TensorSource
    let tensor: TensorInfo

    init(_ original: any TensorSource, tensor: TensorInfo) {
        self.original = original
        self.tensor = tensor
    }

    var path: String { original.path }
    var readsConcurrently: Bool { original.readsConcurrently }
    func makeStream() throws -> any ByteStream { try original.makeStream() }
    func makeStreamInAnyOrder() throws -> any ByteStream { try original.makeStreamInAnyOrder() }
}
