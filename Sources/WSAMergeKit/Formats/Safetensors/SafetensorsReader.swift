#if canImport(Glibc)
import Glibc
#endif

/// Opens single-file and sharded safetensors checkpoints.
enum SafetensorsReader {
    /// Reads and validates the header of one `.safetensors` file.
    static func header(of file: ReadableFile) throws -> SafetensorsHeader {
        let prefix = try file.readBytes(at: 0, count: min(8, file.size))
        let length = try SafetensorsHeader.headerLength(prefix: prefix, fileSize: file.size, file: file.path)
        let json = try file.readBytes(at: 8, count: length)
        return try json.withUnsafeBytes { bytes throws in
            try SafetensorsHeader(json: bytes, bufferSize: file.size - 8 - length, file: file.path)
        }
    }

    /// One `.safetensors` file as a checkpoint.
    static func open(_ file: ReadableFile) throws -> Checkpoint {
        let header = try header(of: file)
        return Checkpoint(
            path: file.path, format: .safetensors, metadata: header.metadata,
            sources: header.entries.map { FileSlice(tensor: $0.info, file: file, offset: header.dataStart + $0.begin) },
            files: [file])
    }

    /// Refuses a shard that is a symbolic link leading out of the index's directory (whose bytes
    /// the index's author does not own: `/etc/shadow`, another user's file). The one exception is
    /// the Hugging Face cache, where `snapshots/REV/NAME` links to `../../blobs/HASH`.
    static func refuseLinkOut(directory: String, shard: String, index: String) throws {
        // Missing files are left to ReadableFile, which says so.
        guard let root = realPath(directory), let target = realPath(directory + "/" + shard) else { return }
        if target.hasPrefix(root + "/") { return }
        let snapshots = parentDirectory(of: root)
        if baseName(of: snapshots) == "snapshots", target.hasPrefix(parentDirectory(of: snapshots) + "/blobs/") { return }
        throw WSAMergeError.malformed(file: index, reason: "shard '\(shard)' is a symbolic link out of the index's directory; refusing to follow it")
    }

    /// A sharded checkpoint from its `*.safetensors.index.json`:
    /// `{"metadata": {...}, "weight_map": {tensor: shard file}}`. Shards are read in the order of
    /// their names, each shard's tensors in storage order.
    static func openSharded(index: ReadableFile, json: JSON) throws -> Checkpoint {
        let path = index.path
        guard case .object(let weightMap)? = json["weight_map"] else {
            throw WSAMergeError.malformed(file: path, reason: "index has no weight_map object")
        }
        var shardOf: [ByteKey: String] = [:]  // by tensor name, byte-wise
        var listed: [(tensor: String, shard: String)] = []
        for (tensor, value) in weightMap {
            guard case .string(let shard) = value else {
                throw WSAMergeError.malformed(file: path, tensor: tensor, reason: "weight_map value is not a file name")
            }
            guard !shard.isEmpty, !shard.hasPrefix("/"), !shard.split(separator: "/").contains("..") else {
                throw WSAMergeError.malformed(file: path, tensor: tensor, reason: "shard path '\(shard)' leaves the index's directory")
            }
            shardOf[ByteKey(tensor)] = shard
            listed.append((tensor, shard))
        }
        var metadata: [String: String] = [:]
        if case .object(let pairs)? = json["metadata"] {
            for (key, value) in pairs { if case .string(let s) = value { metadata[key] = s } }
        }
        let directory = parentDirectory(of: path)
        var sources: [any TensorSource] = []
        var files: [ReadableFile] = [index]
        var seen = Set<ByteKey>()
        for shard in Set(shardOf.values).sorted() {
            try refuseLinkOut(directory: directory, shard: shard, index: path)
            let file = try ReadableFile(path: directory + "/" + shard)
            let header = try header(of: file)
            if files.count == 1 { metadata.merge(header.metadata) { index, _ in index } }
            files.append(file)
            for entry in header.entries {
                let name = entry.info.name
                let key = ByteKey(name)
                guard shardOf[key] == shard else {
                    throw WSAMergeError.malformed(file: file.path, tensor: name,
                                     reason: shardOf[key] == nil ? "not listed in the index's weight_map" : "the index maps it to '\(shardOf[key]!)'")
                }
                guard seen.insert(key).inserted else {
                    throw WSAMergeError.malformed(file: file.path, tensor: name, reason: "duplicate tensor name across shards")
                }
                sources.append(FileSlice(tensor: entry.info, file: file, offset: header.dataStart + entry.begin))
            }
        }
        for (tensor, shard) in listed.sorted(by: { $0.tensor < $1.tensor }) where !seen.contains(ByteKey(tensor)) {
            throw WSAMergeError.malformed(file: directory + "/" + shard, tensor: tensor, reason: "listed in the index but missing from its shard")
        }
        metadata["total_size"] = nil
        return Checkpoint(path: path, format: .shardedSafetensors, metadata: metadata, sources: sources, files: files)
    }
}
