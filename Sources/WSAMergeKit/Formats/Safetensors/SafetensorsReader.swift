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

    /// A sharded checkpoint from its `*.safetensors.index.json`:
    /// `{"metadata": {...}, "weight_map": {tensor: shard file}}`. Shards are read in the order of
    /// their names, each shard's tensors in storage order.
    static func openSharded(index: ReadableFile, json: JSON) throws -> Checkpoint {
        var shards = try ShardIndex(index: index, json: json)
        var metadata = shards.metadata
        var sources: [any TensorSource] = []
        var files: [ReadableFile] = [index]
        for shard in shards.shards {
            let file = try shards.open(shard)
            let header = try header(of: file)
            if files.count == 1 { metadata.merge(header.metadata) { index, _ in index } }
            metadata["total_size"] = nil
            files.append(file)
            for entry in header.entries {
                try shards.add(entry.info.name, shard: shard, file: file.path)
                sources.append(FileSlice(tensor: entry.info, file: file, offset: header.dataStart + entry.begin))
            }
        }
        try shards.checkComplete()
        return Checkpoint(path: index.path, format: .shardedSafetensors, metadata: metadata, sources: sources, files: files)
    }
}
