/// Opens any supported checkpoint, recognising the format by content rather than by extension:
/// a zip with a `data.pkl` member is a PyTorch checkpoint, another `PK\x03\x04` a `.npz` archive,
/// `\x93NUMPY` an `.npy` array, a JSON object with a `weight_map` a sharded index (safetensors or
/// PyTorch shards), a raw pickle stream is refused, anything else must be a valid `.safetensors`
/// file. A directory holds one `*.safetensors.index.json` or a `model.safetensors`, else a
/// `pytorch_model.bin.index.json` or a `pytorch_model.bin` (safetensors is preferred).
/// `model+adapter`, where no such path exists, is the model with a LoRA adapter merged in
/// (`LoraAdapter`). A new format is one folder under `Formats/` and one line here.
public enum CheckpointReader {
    public static func open(_ path: String) throws -> Checkpoint {
        if pathKind(path) == .directory { return try openDirectory(path) }
        if let (model, adapter) = LoraAdapter.split(path) { return try LoraAdapter.apply(adapter, to: open(model), model: model) }
        if let missing = LoraAdapter.missingAdapter(path) { throw missing }
        let file = try ReadableFile(path: path)
        let head = try file.readBytes(at: 0, count: min(64, file.size))
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) || head.starts(with: [0x50, 0x4B, 0x05, 0x06]) {
            // By its members: `*/data.pkl` is PyTorch, `NAME.npy` members a `.npz`. A zip whose
            // directory the stored-zip reader cannot parse goes to libzip, which says why.
            if let zip = try? StoredZip(file), PyTorchReader.isPyTorchArchive(zip) {
                return try PyTorchReader.open(file, zip: zip)
            }
            let archive = try ZipArchive(path: file.path)
            if NumPyReader.isNpz(archive) { return try NumPyReader.openNpz(file, archive: archive) }
            throw WSAMergeError.malformed(file: path, reason: "a zip archive that is not a checkpoint wsamerge reads (a .npz holds NAME.npy members, a PyTorch checkpoint a data.pkl)")
        }
        if head.starts(with: NpyHeader.magic) {
            return try NumPyReader.openNpy(file)
        }
        guard file.size >= 8 else {
            throw WSAMergeError.malformed(file: path, reason: "file is \(file.size) bytes, too small to be a checkpoint (.safetensors, .npz, .npy or PyTorch)")
        }
        if !Self.looksLikeSafetensors(head, size: file.size), let refusal = PyTorchReader.rawPickleRefusal(head, path: path) {
            throw refusal
        }
        if head.starts(with: Array("version https://git-lfs".utf8)) {
            throw WSAMergeError.malformed(file: path, reason: "this is a git-lfs pointer file, not the checkpoint (run 'git lfs pull')")
        }
        // A safetensors length prefix may itself start with `{` (length 123, 0x7B20, …): only
        // a file that is not a plausible safetensors file is taken for a JSON index.
        if !Self.looksLikeSafetensors(head, size: file.size),
           let first = head.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }), first == UInt8(ascii: "{") {
            return try openIndex(file)
        }
        if Self.looksLikeText(head), file.size >= 8 {
            let length = head.prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            if length > UInt64(SafetensorsHeader.maxHeaderLength) || length > UInt64(file.size - 8) {
                throw WSAMergeError.malformed(file: path, reason: "not a recognised checkpoint (expected .safetensors, a sharded index, .npz or .npy)")
            }
        }
        return try SafetensorsReader.open(file)
    }

    /// Opens every path, in order, with `prefixes` stripped from the tensor names.
    public static func open(_ paths: [String], stripping prefixes: [String] = []) throws -> [Checkpoint] {
        var result: [Checkpoint] = []
        for path in paths { result.append(try open(path).stripping(prefixes)) }
        TestHooks.pause(at: "open")
        return result
    }

    /// Whether the head is a length prefix the file can hold, followed by a JSON object.
    private static func looksLikeSafetensors(_ head: [UInt8], size: Int) -> Bool {
        guard head.count > 8 else { return false }
        let length = head.prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard length <= UInt64(SafetensorsHeader.maxHeaderLength), length <= UInt64(size - 8) else { return false }
        return head[8...].first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }) == UInt8(ascii: "{")
    }

    /// Whether the first eight bytes are printable ASCII (a text file, not a length prefix).
    private static func looksLikeText(_ head: [UInt8]) -> Bool {
        head.count >= 8 && head.prefix(8).allSatisfy { (0x20...0x7E).contains($0) || $0 == 0x0A || $0 == 0x09 || $0 == 0x0D }
    }

    private static func openIndex(_ file: ReadableFile) throws -> Checkpoint {
        guard file.size <= SafetensorsHeader.maxHeaderLength else {
            throw WSAMergeError.malformed(file: file.path, reason: "index file is larger than \(SafetensorsHeader.maxHeaderLength) bytes")
        }
        let bytes = try file.readBytes(at: 0, count: file.size)
        let json: JSON
        do {
            json = try bytes.withUnsafeBytes { raw throws in try JSON.parse(raw) }
        } catch {
            throw WSAMergeError.malformed(file: file.path, reason: "index is not valid JSON: \(error)")
        }
        // By the first shard it names (in name order): a zip archive is a PyTorch shard, a raw
        // pickle stream a legacy one (refused, saying how to re-save it), else safetensors.
        if let (path, head) = Self.firstShard(json, directory: parentDirectory(of: file.path)) {
            if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return try PyTorchReader.openSharded(index: file, json: json) }
            if !Self.looksLikeSafetensors(head, size: Int.max), let refusal = PyTorchReader.rawPickleRefusal(head, path: path) {
                throw refusal
            }
        }
        return try SafetensorsReader.openSharded(index: file, json: json)
    }

    /// The path and first bytes of the first shard an index names (in name order), when it is
    /// a file inside the index's directory.
    private static func firstShard(_ json: JSON, directory: String) -> (String, [UInt8])? {
        guard case .object(let weightMap)? = json["weight_map"] else { return nil }
        let shards = weightMap.compactMap { if case .string(let s) = $0.1 { s } else { nil } }
        guard let first = shards.min(), !first.hasPrefix("/"), !first.split(separator: "/").contains(".."),
              let file = try? ReadableFile(path: directory + "/" + first), file.size >= 4,
              let head = try? file.readBytes(at: 0, count: min(64, file.size)) else { return nil }
        return (file.path, head)
    }

    /// A model directory: its weights, plus the weights of the sentence-transformers modules
    /// `modules.json` lists in sub-folders (`2_Dense/model.safetensors` …), named
    /// `2_Dense.<name>`.
    private static func openDirectory(_ path: String) throws -> Checkpoint {
        let main = try openWeights(path)
        let modules = submodules(of: path)
        guard !modules.isEmpty else { return main }
        var sources = main.sources, files = main.files
        var seen = Set(main.tensors.map { ByteKey($0.name) })
        for module in modules {
            let weights = try openWeights(joinPath(path, module))
            files += weights.files
            for source in weights.sources {
                let name = module + "." + source.tensor.name
                guard seen.insert(ByteKey(name)).inserted else {
                    throw WSAMergeError.malformed(file: weights.path, tensor: name, reason: "the module's tensor name is also a tensor of the model")
                }
                sources.append(RenamedSource(source, tensor: try TensorInfo(name: name, dtype: source.tensor.dtype, shape: source.tensor.shape,
                                                                            file: weights.path)))
            }
        }
        return Checkpoint(path: main.path, format: main.format, metadata: main.metadata, sources: sources, files: files,
                          nonTensors: main.nonTensors, modules: modules)
    }

    /// The sub-folders of a sentence-transformers directory that `modules.json` lists and that
    /// hold weights (a Dense layer; not the transformer at the root, nor pooling).
    static func submodules(of path: String) -> [String] {
        guard let file = try? ReadableFile(path: joinPath(path, "modules.json")), file.size <= 1 << 20,
              let bytes = try? file.readBytes(at: 0, count: file.size),
              let json = try? bytes.withUnsafeBytes({ try JSON.parse($0) }), let list = json.arrayValue else { return [] }
        return list.compactMap { entry -> String? in
            guard let module = entry["path"]?.stringValue, !module.isEmpty, !module.contains("/"), !module.hasPrefix("."),
                  pathKind(joinPath(path, module)) == .directory else { return nil }
            let entries = listDirectory(joinPath(path, module))
            return entries.contains("model.safetensors") || entries.contains("pytorch_model.bin") ? module : nil
        }
    }

    private static func openWeights(_ path: String) throws -> Checkpoint {
        let entries = listDirectory(path)
        let indexes = entries.filter { $0.hasSuffix(".safetensors.index.json") }
        if indexes.count == 1 { return try open(joinPath(path, indexes[0])) }
        // Beside variants (`model.fp16.safetensors.index.json`), the plain one, as transformers loads.
        if indexes.contains("model.safetensors.index.json") { return try open(joinPath(path, "model.safetensors.index.json")) }
        if indexes.count > 1 {
            throw WSAMergeError.malformed(file: path, reason: "directory holds several index files: \(indexes.joined(separator: ", "))")
        }
        if entries.contains("model.safetensors") { return try open(joinPath(path, "model.safetensors")) }
        if entries.contains("pytorch_model.bin.index.json") { return try open(joinPath(path, "pytorch_model.bin.index.json")) }
        if entries.contains("pytorch_model.bin") { return try open(joinPath(path, "pytorch_model.bin")) }
        throw WSAMergeError.missingInput(file: path, reason: "directory holds none of *.safetensors.index.json, model.safetensors, pytorch_model.bin.index.json, pytorch_model.bin")
    }
}
