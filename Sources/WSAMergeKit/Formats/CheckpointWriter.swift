/// Where and how a checkpoint is written.
public struct OutputOptions: Sendable {
    public enum Layout: Sendable, Equatable {
        case safetensors
        /// A directory of `model-0000i-of-0000N.safetensors` shards plus an index.
        case sharded(maxShardBytes: Int)
        case npz(compressed: Bool)
        case npy
    }

    public var path: String
    public var layout: Layout
    public var force: Bool

    public init(path: String, layout: Layout, force: Bool = false) {
        self.path = path
        self.layout = layout
        self.force = force
    }

    /// Refuses an output that cannot or may not be written, before any work is done.
    public func precheck(inputs: Set<FileIdentity>) throws {
        if case .sharded = layout {
            try OutputFile.refuseStandardOutput(path)
            let parent = parentDirectory(of: path.hasSuffix("/") ? String(path.dropLast()) : path)
            guard pathKind(parent) == .directory else {
                throw WSAMergeError.cannotCreate(file: path, reason: pathKind(parent) == .missing ? "directory '\(parent)' does not exist" : "'\(parent)' is not a directory")
            }
            if pathKind(path) == .file { throw WSAMergeError.cannotCreate(file: path, reason: "exists and is not a directory") }
        } else {
            try OutputFile.precheck(path, force: force, inputs: inputs)
        }
    }

    /// Default for sharded output: at most 5 GB per shard (Hugging Face's default).
    public static let defaultShardBytes = 5_000_000_000

    /// The layout `-o` implies: `*.npz`, `*.npy`, a directory (existing, or written with a
    /// trailing `/`) or `--max-shard-size` for shards, else a single `.safetensors` file.
    public static func inferred(path: String, maxShardBytes: Int?, compress: Bool, force: Bool) throws -> OutputOptions {
        let lower = path.lowercased()
        if lower.hasSuffix(".npz") {
            guard maxShardBytes == nil else { throw WSAMergeError.usage("--max-shard-size applies to safetensors output, not .npz") }
            return OutputOptions(path: path, layout: .npz(compressed: compress), force: force)
        }
        for suffix in [".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5"] where lower.hasSuffix(suffix) {
            throw WSAMergeError.usage("\(path): wsamerge writes .safetensors, .npz, .npy or a model directory, never \(suffix) (PyTorch and other formats are read only)")
        }
        guard !compress else { throw WSAMergeError.usage("--compress applies to .npz output only") }
        if lower.hasSuffix(".npy") {
            guard maxShardBytes == nil else { throw WSAMergeError.usage("--max-shard-size applies to safetensors output, not .npy") }
            return OutputOptions(path: path, layout: .npy, force: force)
        }
        if let maxShardBytes {
            return OutputOptions(path: path, layout: .sharded(maxShardBytes: maxShardBytes), force: force)
        }
        if path.hasSuffix("/") || pathKind(path) == .directory {
            return OutputOptions(path: path, layout: .sharded(maxShardBytes: defaultShardBytes), force: force)
        }
        return OutputOptions(path: path, layout: .safetensors, force: force)
    }
}

/// Receives a checkpoint's tensors in order and writes them atomically. Callers send each
/// tensor's bytes (C order, little-endian) in one or more `write` calls, exactly `byteCount`
/// bytes per tensor, then call `finish()`; until then nothing is visible at the destination.
public protocol CheckpointWriter: AnyObject {
    /// Appends bytes of the current tensor; moves to the next tensor when one is complete.
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Checks every tensor was written completely and puts the output in place.
    func finish() throws
    /// Files written beside a directory output (a model directory's recipe, config, tokenizer
    /// files and card), which `finish()` puts in place together with the weights, so that a
    /// failed or killed run leaves neither. Only directory outputs have them.
    func add(companions: [OutputFile])
}

extension CheckpointWriter {
    public func add(companions: [OutputFile]) {
        precondition(companions.isEmpty, "only a directory output has files beside its weights")
    }
}

/// Makes the writer for `options`.
///
/// - Parameters:
///   - tensors: the output tensors in the order their bytes will be written.
///   - inputs: identities of every input file; the output may not be one of them.
public func makeWriter(_ options: OutputOptions, tensors: [TensorInfo], metadata: [String: String],
                       inputs: Set<FileIdentity>) throws -> any CheckpointWriter {
    try options.layout.checkNames(tensors, file: options.path)
    switch options.layout {
    case .safetensors:
        return try SafetensorsWriter(destination: options.path, tensors: tensors, metadata: metadata,
                                     force: options.force, inputs: inputs)
    case .sharded(let maxShardBytes):
        return try ShardedSafetensorsWriter(directory: options.path, maxShardBytes: maxShardBytes, tensors: tensors,
                                            metadata: metadata, force: options.force, inputs: inputs)
    case .npz(let compressed):
        return try NpzWriter(destination: options.path, tensors: tensors, compressed: compressed,
                             force: options.force, inputs: inputs)
    case .npy:
        return try NpyWriter(destination: options.path, tensor: tensors[0], force: options.force, inputs: inputs)
    }
}

extension OutputOptions.Layout {
    /// Refuses, naming the tensor, a name this format cannot hold, so that nothing is written
    /// that the reference readers cannot read back: `__metadata__` in safetensors (the header's
    /// reserved key); in `.npz` a member name (`NAME.npy`) over 65,535 bytes, with a NUL (zip
    /// readers cut the name there), absolute or with a `..` component (it would unpack outside
    /// the folder). Two tensors of one name are refused everywhere; names are compared byte-wise.
    /// NumPy holds no BF16 (nor F8, …) and a `.npy` file one array. Called before anything is
    /// written (by `--dry-run` too).
    public func checkNames(_ tensors: [TensorInfo], file: String) throws {
        if case .npy = self, tensors.count != 1 {
            throw WSAMergeError.hinted(.usage("\(file): a .npy file holds one array but \(tensors.count) tensors would be written"), .oneTensor)
        }
        var names = Set<ByteKey>()
        for tensor in tensors {
            let name = tensor.name
            guard names.insert(ByteKey(name)).inserted else {
                throw WSAMergeError.malformed(file: file, tensor: name, reason: "two output tensors have this name")
            }
            switch self {
            case .safetensors, .sharded:
                if name == "__metadata__" {
                    throw WSAMergeError.malformed(file: file, tensor: name,
                                                  reason: "safetensors reserves this name for the header's metadata; rename the tensor or write .npz")
                }
            case .npz:
                let member = Array((name + ".npy").utf8)
                if member.count > 0xFFFF {
                    throw WSAMergeError.malformed(file: file, tensor: name,
                                                  reason: "name is \(member.count - 4) bytes; a zip member name holds at most 65,531 before '.npy'")
                }
                if member.contains(0) {
                    throw WSAMergeError.malformed(file: file, tensor: name, reason: "name holds a NUL byte, which a zip member name cannot")
                }
                if member.first == UInt8(ascii: "/") || name.split(separator: "/", omittingEmptySubsequences: false).contains("..") {
                    throw WSAMergeError.malformed(file: file, tensor: name,
                                                  reason: "name is an absolute path or has a '..' component, which would unpack outside the archive's folder")
                }
            case .npy:
                break
            }
            if case .npz = self { _ = try NpyHeader.encoded(for: tensor, file: file) }
            if case .npy = self { _ = try NpyHeader.encoded(for: tensor, file: file) }
        }
    }
}

/// Tracks which tensor the next bytes belong to, for writers.
struct WriteCursor {
    let tensors: [TensorInfo]
    private(set) var index = 0
    private(set) var written = 0

    init(tensors: [TensorInfo]) {
        self.tensors = tensors
        skipEmpty()
    }

    /// The tensor being written, or `nil` when all are complete.
    var current: TensorInfo? { index < tensors.count ? tensors[index] : nil }

    /// Accounts for `count` bytes of the current tensor; returns true when it is now complete.
    mutating func advance(by count: Int, file: String) throws -> Bool {
        guard let tensor = current, written + count <= tensor.byteCount else {
            throw WSAMergeError.io(file: file, reason: "internal error: more bytes written than the tensors hold")
        }
        written += count
        if written == tensor.byteCount {
            index += 1
            written = 0
            return true
        }
        return false
    }

    /// Steps over zero-byte tensors (they need no `write`).
    mutating func skipEmpty() {
        while let tensor = current, tensor.byteCount == 0, written == 0 { index += 1 }
    }

    func checkComplete(file: String) throws {
        if let tensor = current {
            throw WSAMergeError.io(file: file, reason: "internal error: tensor '\(tensor.name)' was not written completely")
        }
    }
}
