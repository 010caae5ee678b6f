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
        try OutputOptions.Layout.safetensors.checkNames(tensors, file: destination)
        let header = Self.header(tensors: tensors, metadata: metadata)
        try Self.checkHeaderLength(header.count - 8, file: destination)
        output = try OutputFile(destination: destination, force: force, inputs: inputs)
        cursor = WriteCursor(tensors: tensors)
        try output.write(header)
    }

    /// Refuses a header the reference readers would refuse (over 100,000,000 bytes).
    static func checkHeaderLength(_ length: Int, file: String) throws {
        guard length <= SafetensorsHeader.maxHeaderLength else {
            throw WSAMergeError.malformed(file: file, reason: "the header would be \(length) bytes, over the \(SafetensorsHeader.maxHeaderLength) that safetensors readers accept (too many tensors or too long names or metadata for one file; write shards with --max-shard-size)")
        }
    }

    /// The length prefix and padded JSON header for `tensors`.
    static func header(tensors: [TensorInfo], metadata: [String: String]) -> [UInt8] {
        // Written as text directly (the same bytes as `JSON.object(...).text`), without a `JSON`
        // tree of every tensor, which for a million tensors cost ten times the header.
        var json = "{"
        if !metadata.isEmpty {
            json += "\"__metadata__\":"
            JSON.object(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }).write(to: &json)
        }
        var offset = 0
        for tensor in tensors {
            if json.utf8.count > 1 { json += "," }
            JSON.writeString(tensor.name, to: &json)
            json += ":{\"dtype\":\"\(tensor.dtype.rawValue)\",\"shape\":["
            for (i, d) in tensor.shape.enumerated() { json += i == 0 ? String(d) : "," + String(d) }
            json += "],\"data_offsets\":[\(offset),\(offset + tensor.byteCount)]}"
            offset += tensor.byteCount
        }
        json += "}"
        while (8 + json.utf8.count) % 8 != 0 { json += " " }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + json.utf8.count)
        var n = UInt64(json.utf8.count)
        for _ in 0..<8 { bytes.append(UInt8(n & 0xFF)); n >>= 8 }
        bytes.append(contentsOf: json.utf8)
        return bytes
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

    /// Checks that every tensor was written and hands over the file, still unnamed, for a
    /// writer that links it in with its own (a model directory's module weights).
    func completed() throws -> OutputFile {
        try cursor.checkComplete(file: output.destination)
        try output.finishWriting()
        return output
    }
}

/// Writes a sharded checkpoint: `model-00001-of-0000N.safetensors` files of at most
/// `maxShardBytes` of tensor data each (a larger tensor gets a shard of its own) and
/// `model.safetensors.index.json` with `metadata.total_size` and the `weight_map`. A single
/// shard is written as `model.safetensors` without an index. Nothing is linked into the
/// directory until every shard is complete and synced.
///
/// The directory is locked (`flock`) from the start to the end of the run, so a second run
/// writing there fails at once (exit 73) instead of mixing its shards with this one's. With
/// `force`, the checkpoint already there is replaced: the files this run writes, and the files
/// of the checkpoint it replaces (the index, every shard that index lists, `model.safetensors`),
/// removed once the new set is in place. Other files, also ones named like shards, stay. No
/// file that would be replaced or removed may be an input.
final class ShardedSafetensorsWriter: CheckpointWriter {
    private let directory: String
    private let shards: [SafetensorsWriter]
    private let index: OutputFile?
    /// Files put in place with the shards (see `CheckpointWriter.add(companions:)`).
    private var companions: [OutputFile] = []
    private let inputs: Set<FileIdentity>
    private var shard = 0
    private let createdDirectory: Bool
    /// The directory's `CleanupOnSignal` entry while a run that created it may still fail.
    private var directorySlot: Int32 = -1
    /// The open directory holding the lock.
    private let lock: Int32
    private var finished = false

    init(directory: String, maxShardBytes: Int, tensors: [TensorInfo], metadata: [String: String], force: Bool,
         inputs: Set<FileIdentity>) throws {
        guard maxShardBytes > 0 else { throw WSAMergeError.usage("--max-shard-size must be positive") }
        var dir = directory
        while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
        try OutputOptions.Layout.sharded(maxShardBytes: maxShardBytes).checkNames(tensors, file: dir)
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
        let created = pathKind(dir) == .missing
        var slot: Int32 = -1
        if created { slot = CleanupOnSignal.add(.rmdir, dir) }
        do {
            try makeDirectory(dir)
        } catch {
            CleanupOnSignal.remove(slot)
            throw error
        }
        let lockDescriptor = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        func undo() {
            if lockDescriptor >= 0 { close(lockDescriptor) }
            if created { rmdir(dir) }
            CleanupOnSignal.remove(slot)
        }
        do {
            guard lockDescriptor >= 0 else {
                throw WSAMergeError.cannotCreate(file: dir, reason: "cannot open the directory: \(systemError(errno))")
            }
            if flock(lockDescriptor, LOCK_EX | LOCK_NB) != 0 {
                let reason = errno == EWOULDBLOCK ? "another wsamerge run is writing to this directory" : "cannot lock the directory: \(systemError(errno))"
                throw WSAMergeError.cannotCreate(file: dir, reason: reason)
            }
            // An earlier checkpoint here would mix with this one (an old index beside a new
            // model.safetensors, or shards of another count): replace it only with --force.
            let index = count > 1 ? ["model.safetensors.index.json"] : []
            let replaced = Self.replacedFiles(in: dir, writing: names + index)
            if let first = replaced.first, !force {
                throw WSAMergeError.hinted(.cannotCreate(file: dir, reason: "already holds a checkpoint (\(first))"), .force)
            }
            try Self.refuseInputs(replaced, in: dir, inputs: inputs)
            // Hidden temporaries and backups that dead runs left beside the files of the
            // checkpoint being replaced (each output file clears those of its own name).
            for name in replaced { removeDeadTemporaries(in: dir, of: name) }
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
                self.index = file
            } else {
                self.index = nil
            }
        } catch {
            undo()
            throw error
        }
        self.directory = dir
        self.inputs = inputs
        self.createdDirectory = created
        self.directorySlot = slot
        self.lock = lockDescriptor
    }

    private static func pad(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }

    /// The files in `directory` that a run writing `names` replaces or removes: those of the
    /// names that exist, and the checkpoint already there: `model.safetensors`, and the
    /// `model.safetensors.index.json` with every file its `weight_map` lists in this directory.
    static func replacedFiles(in directory: String, writing names: [String]) -> [String] {
        var result = Set(names.filter { pathKind(directory + "/" + $0) != .missing })
        for name in ["model.safetensors", "model.safetensors.index.json"] where pathKind(directory + "/" + name) != .missing {
            result.insert(name)
        }
        let indexPath = directory + "/model.safetensors.index.json"
        if pathKind(indexPath) == .file, let file = try? ReadableFile(path: indexPath), file.size <= SafetensorsHeader.maxHeaderLength,
           let bytes = try? file.readBytes(at: 0, count: file.size),
           let json = try? bytes.withUnsafeBytes({ try JSON.parse($0) }), case .object(let map)? = json["weight_map"] {
            for case (_, .string(let shard)) in map where !shard.isEmpty && !shard.contains("/") && shard != "." && shard != ".."
                && pathKind(directory + "/" + shard) == .file {
                result.insert(shard)
            }
        }
        return result.sorted()
    }

    /// Refuses to replace or remove a file the run reads.
    static func refuseInputs(_ names: [String], in directory: String, inputs: Set<FileIdentity>) throws {
        for name in names {
            if let identity = FileIdentity(path: directory + "/" + name), inputs.contains(identity) {
                throw WSAMergeError.cannotCreate(file: directory + "/" + name,
                                                 reason: "output is one of the inputs; refusing to replace or remove it")
            }
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        // Move past shards that have received all of their bytes, freeing their buffers.
        while shard < shards.count - 1 && shards[shard].isComplete {
            try shards[shard].finishWriting()
            shard += 1
        }
        try shards[shard].write(bytes)
    }

    func add(companions: [OutputFile]) { self.companions += companions }

    func finish() throws {
        // Every file synced first (the slow part), then all of them linked into place at once:
        // a run killed while syncing leaves none of them, not the first shards of the set.
        for writer in shards { try writer.sync() }
        for file in companions { try file.sync() }
        try index?.sync()
        let checkpoint = shards.map(\.destination) + (index.map { [$0.destination] } ?? [])
        let destinations = checkpoint + companions.map(\.destination)
        let written = Set(checkpoint.map { baseName(of: $0) })
        // What the commit replaces, read again under the lock (the directory may have changed
        // while this run computed, though not through another wsamerge run).
        let replaced = Self.replacedFiles(in: directory, writing: Array(written).sorted())
        try Self.refuseInputs(replaced, in: directory, inputs: inputs)
        // Files of an earlier checkpoint at these names (--force) are kept under hidden names
        // until the whole set is in place: a link that fails part way, or SIGINT/SIGTERM, puts
        // them back, so a failed run never leaves new shards beside old ones.
        var kept: [(path: String, backup: String)] = []
        var linked: [String] = []
        var slots: [Int32] = []
        defer { for slot in slots { CleanupOnSignal.remove(slot) } }
        do {
            for path in destinations where pathKind(path) == .file {
                let backup = "\(parentDirectory(of: path))/.\(baseName(of: path)).wsamerge-\(getpid()).old"
                unlink(backup)
                guard link(path, backup) == 0 else {
                    throw WSAMergeError.cannotCreate(file: path, reason: "cannot keep the file it replaces: \(systemError(errno))")
                }
                kept.append((path, backup))
                slots.append(CleanupOnSignal.add(.restore, backup, target: path))
            }
            for path in destinations where !kept.contains(where: { $0.path == path }) {
                slots.append(CleanupOnSignal.add(.unlink, path))
            }
            for writer in shards {
                try writer.finish()
                linked.append(writer.destination)
            }
            for file in companions {
                try file.commit()
                linked.append(file.destination)
            }
            if let index {
                try index.commit()
                linked.append(index.destination)
            }
        } catch {
            for path in linked where !kept.contains(where: { $0.path == path }) { unlink(path) }
            for (path, backup) in kept {
                rename(backup, path)
                unlink(backup)  // left when the name still held that same file
            }
            throw error
        }
        for slot in slots { CleanupOnSignal.remove(slot) }
        slots = []
        for (_, backup) in kept { unlink(backup) }
        finished = true
        CleanupOnSignal.remove(directorySlot)
        directorySlot = -1
        for name in replaced where !written.contains(name) { unlink(directory + "/" + name) }
    }

    deinit {
        // A failed run leaves no directory it created (its files were never linked in): its
        // temporaries go first, then the directory.
        if !finished {
            for writer in shards { writer.discard() }
            for file in companions { file.discard() }
            index?.discard()
            if createdDirectory { rmdir(directory) }
        }
        CleanupOnSignal.remove(directorySlot)
        close(lock)
    }
}

extension SafetensorsWriter {
    /// Whether every tensor has been written.
    var isComplete: Bool { cursor.current == nil }

    /// Removes the temporary of a file that will not be committed.
    func discard() { output.discard() }
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
