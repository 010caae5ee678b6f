#if canImport(Glibc)
import Glibc
#endif

/// Writes one `.safetensors` file, streaming tensor data after a header computed up front.
///
/// Bytes are deterministic: compact JSON with `__metadata__` first (keys sorted, omitted when
/// empty), then the tensors in the order given (wsamerge keeps the input's storage order),
/// packed back to back; the header is padded with spaces so the data starts at a multiple of 8.
final class SafetensorsWriter: CheckpointWriter {
    private let output: OutputFile
    var destination: String { output.destination }
    private var cursor: WriteCursor

    init(destination: String, tensors: [TensorInfo], metadata: [String: String], force: Bool,
         inputs: Set<FileIdentity>) throws {
        var names = Set<String>()
        for tensor in tensors where !names.insert(tensor.name).inserted {
            throw WSAMergeError.malformed(file: destination, tensor: tensor.name, reason: "two output tensors have this name")
        }
        output = try OutputFile(destination: destination, force: force, inputs: inputs)
        cursor = WriteCursor(tensors: tensors)
        try output.write(Self.header(tensors: tensors, metadata: metadata))
    }

    /// The length prefix and padded JSON header for `tensors`.
    static func header(tensors: [TensorInfo], metadata: [String: String]) -> [UInt8] {
        var members: [(String, JSON)] = []
        if !metadata.isEmpty {
            members.append(("__metadata__", .object(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })))
        }
        var offset = 0
        for tensor in tensors {
            members.append((tensor.name, .object([
                ("dtype", .string(tensor.dtype.rawValue)),
                ("shape", .array(tensor.shape.map { .int($0) })),
                ("data_offsets", .array([.int(offset), .int(offset + tensor.byteCount)])),
            ])))
            offset += tensor.byteCount
        }
        var json = Array(JSON.object(members).text.utf8)
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + json.count)
        var n = UInt64(json.count)
        for _ in 0..<8 { bytes.append(UInt8(n & 0xFF)); n >>= 8 }
        return bytes + json
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        let finished = try cursor.advance(by: bytes.count, file: output.destination)
        cursor.skipEmpty()
        try output.write(bytes)
        if finished { TestHooks.pause(at: "write") }
    }

    /// Writes out what is buffered and frees the buffers (the file is complete).
    func finishWriting() throws {
        try output.finishWriting()
    }

    /// Checks that every tensor was written and syncs the file, without naming it yet.
    func sync() throws {
        try cursor.checkComplete(file: output.destination)
        try output.sync()
    }

    func finish() throws {
        try sync()
        try output.commit()
    }
}

/// Writes a sharded checkpoint: `model-00001-of-0000N.safetensors` files of at most
/// `maxShardBytes` of tensor data each (a larger tensor gets a shard of its own) and
/// `model.safetensors.index.json` with `metadata.total_size` and the `weight_map`. A single
/// shard is written as `model.safetensors` without an index. Nothing is linked into the
/// directory until every shard is complete and synced.
final class ShardedSafetensorsWriter: CheckpointWriter {
    private let directory: String
    private let shards: [SafetensorsWriter]
    private let index: OutputFile?
    private var shard = 0
    /// Checkpoint files of an earlier run in the directory, removed once the new set is in place.
    private let stale: [String]
    private let createdDirectory: Bool
    private var finished = false

    init(directory: String, maxShardBytes: Int, tensors: [TensorInfo], metadata: [String: String], force: Bool,
         inputs: Set<FileIdentity>) throws {
        guard maxShardBytes > 0 else { throw WSAMergeError.usage("--max-shard-size must be positive") }
        var dir = directory
        while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
        self.directory = dir
        createdDirectory = pathKind(dir) == .missing
        try makeDirectory(dir)
        // An earlier checkpoint here would mix with this one (an old index beside a new
        // model.safetensors, or shards of another count): replace it only with --force.
        stale = listDirectory(dir).filter(Self.isCheckpointFile)
        if !stale.isEmpty && !force {
            throw WSAMergeError.cannotCreate(file: dir, reason: "already holds a checkpoint (\(stale[0])); pass --force to replace it")
        }
        var groups: [[TensorInfo]] = [[]]
        var bytes = 0
        for tensor in tensors {
            if !groups[groups.count - 1].isEmpty && bytes + tensor.byteCount > maxShardBytes {
                groups.append([])
                bytes = 0
            }
            groups[groups.count - 1].append(tensor)
            bytes += tensor.byteCount
        }
        let count = groups.count
        let names = count == 1 ? ["model.safetensors"] : (1...count).map { i in
            "model-\(Self.pad(i))-of-\(Self.pad(count)).safetensors"
        }
        var writers: [SafetensorsWriter] = []
        for (group, name) in zip(groups, names) {
            writers.append(try SafetensorsWriter(destination: dir + "/" + name, tensors: group, metadata: metadata,
                                                 force: force, inputs: inputs))
        }
        shards = writers
        if count > 1 {
            var weightMap: [(String, JSON)] = []
            for (group, name) in zip(groups, names) {
                for tensor in group { weightMap.append((tensor.name, .string(name))) }
            }
            let total = tensors.reduce(0) { $0 + $1.byteCount }
            let json = JSON.object([
                // As Hugging Face writes it: the metadata itself lives in every shard's header.
                ("metadata", .object([("total_size", .int(total))])),
                ("weight_map", .object(weightMap)),
            ])
            let file = try OutputFile(destination: dir + "/model.safetensors.index.json", force: force, inputs: inputs)
            try file.write(json.text + "\n")
            index = file
        } else {
            index = nil
        }
    }

    private static func pad(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        // Move past shards that have received all of their bytes, freeing their buffers.
        while shard < shards.count - 1 && shards[shard].isComplete {
            try shards[shard].finishWriting()
            shard += 1
        }
        try shards[shard].write(bytes)
    }

    func finish() throws {
        // Every file synced first (the slow part), then all of them linked into place at once:
        // a run killed while syncing leaves none of them, not the first shards of the set.
        for writer in shards { try writer.sync() }
        try index?.sync()
        // Files of an earlier checkpoint at these names (--force) are kept under hidden names
        // until the whole set is in place: a link that fails part way puts them back, so a
        // failed run never leaves new shards beside old ones.
        let destinations = shards.map(\.destination) + (index.map { [$0.destination] } ?? [])
        var kept: [(path: String, backup: String)] = []
        var linked: [String] = []
        do {
            for path in destinations where pathKind(path) == .file {
                let backup = "\(directory)/.\(baseName(of: path)).wsamerge-\(getpid()).old"
                unlink(backup)
                guard link(path, backup) == 0 else {
                    throw WSAMergeError.cannotCreate(file: path, reason: "cannot keep the file it replaces: \(systemError(errno))")
                }
                kept.append((path, backup))
            }
            for writer in shards {
                try writer.finish()
                linked.append(writer.destination)
            }
            if let index {
                try index.commit()
                linked.append(index.destination)
            }
        } catch {
            for path in linked { unlink(path) }
            for (path, backup) in kept {
                rename(backup, path)
                unlink(backup)  // left when the name still held that same file
            }
            throw error
        }
        for (_, backup) in kept { unlink(backup) }
        finished = true
        let current = Set(listDirectory(directory).filter(Self.isCheckpointFile))
        let written = Set(shards.map { baseName(of: $0.destination) } + (index == nil ? [] : ["model.safetensors.index.json"]))
        for name in current.subtracting(written) where stale.contains(name) { unlink(directory + "/" + name) }
    }

    deinit {
        // A failed run leaves no directory it created (its files were never linked in).
        if !finished && createdDirectory { rmdir(directory) }
    }

    /// `model.safetensors`, `model.safetensors.index.json` or `model-0000i-of-0000n.safetensors`.
    static func isCheckpointFile(_ name: String) -> Bool {
        if name == "model.safetensors" || name == "model.safetensors.index.json" { return true }
        return name.hasPrefix("model-") && name.hasSuffix(".safetensors") && name.contains("-of-")
    }
}

extension SafetensorsWriter {
    /// Whether every tensor has been written.
    var isComplete: Bool { cursor.current == nil }
}

/// Creates directory `path` (not its parents) unless it exists.
func makeDirectory(_ path: String) throws {
    switch pathKind(path) {
    case .directory: return
    case .missing:
        guard mkdir(path, 0o777) == 0 else {
            throw WSAMergeError.cannotCreate(file: path, reason: "cannot create directory: \(systemError(errno))")
        }
    default:
        throw WSAMergeError.cannotCreate(file: path, reason: "exists and is not a directory")
    }
}
