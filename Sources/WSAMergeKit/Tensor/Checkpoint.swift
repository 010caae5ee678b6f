/// A checkpoint: an ordered list of tensors plus string metadata. Headers only: tensor data stays
/// in the files and is streamed through a `TensorReader` when asked for.
public final class Checkpoint: @unchecked Sendable {
    /// The path the user named (file, index or directory).
    public let path: String
    public let format: CheckpointFormat
    /// `__metadata__` (safetensors) or the index's `metadata` strings; empty for NumPy files.
    public let metadata: [String: String]
    /// Tensors in storage order.
    public let tensors: [TensorInfo]
    /// Every file this checkpoint reads (shards, archive).
    public let files: [ReadableFile]
    private let locations: [TensorLocation]
    /// By name, byte-wise (as the reference readers compare names: NFC and NFD spellings differ).
    private let indexByName: [ByteKey: Int]

    init(path: String, format: CheckpointFormat, metadata: [String: String], tensors: [TensorInfo],
         locations: [TensorLocation], files: [ReadableFile]) {
        self.path = path
        self.format = format
        self.metadata = metadata
        self.tensors = tensors
        self.locations = locations
        self.files = files
        var index: [ByteKey: Int] = [:]
        for (i, tensor) in tensors.enumerated() { index[ByteKey(tensor.name)] = i }
        self.indexByName = index
    }

    /// The position of the tensor called `name`.
    public func index(of name: String) -> Int? { indexByName[ByteKey(name)] }

    /// Total number of elements over all tensors.
    public var parameterCount: Int { tensors.reduce(0) { $0 &+ $1.elementCount } }

    /// A reader of tensor `index`'s bytes: C order, little-endian, from the start.
    public func reader(for index: Int) throws -> TensorReader {
        try TensorReader(tensor: tensors[index], location: locations[index])
    }

    /// Whether several of its tensors may be read at once: not for members of one `.npz` archive
    /// (libzip cannot share an archive between threads), nor with a Fortran-order array (each is
    /// transposed in memory, up to 256 MiB, so reading several at once would multiply that).
    public var readsTensorsInParallel: Bool {
        format != .npz && !tensors.indices.contains { locations[$0].transposes(tensors[$0]) }
    }

    /// Device/inode of every file read, to refuse writing over an input.
    public var identities: Set<FileIdentity> { Set(files.map(\.identity)) }
}

/// Where a tensor's stored bytes are and how they are laid out.
struct TensorLocation {
    enum Source {
        /// A byte range of a plain file.
        case file(ReadableFile, offset: Int)
        /// A member of a zip archive, after the member's first `skip` bytes.
        case zipMember(ZipArchive, index: Int, skip: Int)
    }

    let source: Source

    /// The file the tensor is read from, for messages.
    var path: String {
        switch source {
        case .file(let file, _): file.path
        case .zipMember(let archive, _, _): archive.path
        }
    }
    /// Elements are big-endian and must be byte-swapped.
    var bigEndian = false
    /// Elements are in Fortran (column-major) order.
    var fortranOrder = false

    /// Whether `tensor`, stored here, must be transposed (in memory) to be read in C order.
    func transposes(_ tensor: TensorInfo) -> Bool { fortranOrder && tensor.shape.count > 1 && tensor.byteCount > 0 }
}
