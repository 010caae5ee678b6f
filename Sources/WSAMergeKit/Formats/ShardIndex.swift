/// A sharded checkpoint's index (`*.safetensors.index.json`, `pytorch_model.bin.index.json`):
/// `{"metadata": {...}, "weight_map": {tensor: shard file}}`, with every shard inside the index's
/// directory. The safetensors and PyTorch readers share it: they open the shards, in the order
/// of their names, and `add` each shard's tensors.
struct ShardIndex {
    let path: String
    let directory: String
    /// The index's `metadata` strings.
    let metadata: [String: String]
    /// The shard of each tensor, by name byte-wise.
    private let shardOf: [ByteKey: String]
    private let listed: [(tensor: String, shard: String)]
    private var seen = Set<ByteKey>()

    init(index: ReadableFile, json: JSON) throws {
        path = index.path
        directory = parentDirectory(of: path)
        guard case .object(let weightMap)? = json["weight_map"] else {
            throw WSAMergeError.malformed(file: path, reason: "index has no weight_map object")
        }
        var shardOf: [ByteKey: String] = [:]
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
        metadata["total_size"] = nil
        self.metadata = metadata
        self.shardOf = shardOf
        self.listed = listed
    }

    /// The shard file names, sorted.
    var shards: [String] { Set(shardOf.values).sorted() }

    /// Opens `shard`, refusing a symbolic link out of the index's directory (whose bytes the
    /// index's author does not own). The one exception is the Hugging Face cache, where
    /// `snapshots/REV/NAME` links to `../../blobs/HASH`.
    func open(_ shard: String) throws -> ReadableFile {
        if let root = realPath(directory), let target = realPath(directory + "/" + shard), !target.hasPrefix(root + "/") {
            let snapshots = parentDirectory(of: root)
            guard baseName(of: snapshots) == "snapshots", target.hasPrefix(parentDirectory(of: snapshots) + "/blobs/") else {
                throw WSAMergeError.malformed(file: path, reason: "shard '\(shard)' is a symbolic link out of the index's directory; refusing to follow it")
            }
        }
        return try ReadableFile(path: directory + "/" + shard)
    }

    /// Records tensor `name` of `shard` (read from `file`): the index must map it there, once.
    mutating func add(_ name: String, shard: String, file: String) throws {
        let key = ByteKey(name)
        guard shardOf[key] == shard else {
            throw WSAMergeError.malformed(file: file, tensor: name,
                                          reason: shardOf[key] == nil ? "not listed in the index's weight_map" : "the index maps it to '\(shardOf[key]!)'")
        }
        guard seen.insert(key).inserted else {
            throw WSAMergeError.malformed(file: file, tensor: name, reason: "duplicate tensor name across shards")
        }
    }

    /// Refuses a tensor the index lists that no shard held.
    func checkComplete() throws {
        for (tensor, shard) in listed.sorted(by: { $0.tensor < $1.tensor }) where !seen.contains(ByteKey(tensor)) {
            throw WSAMergeError.malformed(file: directory + "/" + shard, tensor: tensor, reason: "listed in the index but missing from its shard")
        }
    }
}
