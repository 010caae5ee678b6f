/// A value of a PyTorch checkpoint that is not a tensor (an epoch number, a learning rate, a
/// name), listed by `inspect` and ignored elsewhere.
public struct NonTensorLeaf: Sendable, Equatable {
    /// Dotted path through the nested dicts and lists, like tensor names.
    public let name: String
    /// A short Python-like rendering (at most about 200 characters).
    public let value: String
}

/// One tensor of a checkpoint's pickle: a view of a storage, as `_rebuild_tensor_v2/_v3` gives it.
struct TorchTensorEntry: Equatable {
    let name: String
    let dtype: DType
    let shape: [Int]
    /// Element strides; 0 for dimensions of size 0 or 1 (they never move).
    let strides: [Int]
    /// The storage record, `<prefix>/data/<key>`.
    let storageKey: String
    /// Element size of the storage type and its element count, as the persistent id declares.
    let storageElementBytes: Int
    let storageElements: Int
    /// In elements of `dtype`.
    let storageOffset: Int
}

/// Turns the value tree of a checkpoint's `data.pkl` into tensor entries and non-tensor leaves.
/// Tensors are named by their path through nested dicts (and lists or tuples that hold tensors,
/// by index), joined with `.`; every view is checked to lie inside its storage.
struct TorchCheckpointContents {
    static let maxDepth = 128
    static let maxRendered = 200

    let pickle: Pickle
    let file: String
    var tensors: [TorchTensorEntry] = []
    var nonTensors: [NonTensorLeaf] = []
    private var budget: Int
    private var containsTensorMemo: [Int: Bool] = [:]
    private var path: Set<Int> = []

    /// Reads `pickle`; `rootName` names a tensor saved on its own (`torch.save(tensor)`).
    init(pickle: Pickle, file: String, rootName: String) throws {
        self.pickle = pickle
        self.file = file
        // Each object is visited about once; shared ones (tied weights) a few times more. A pickle
        // whose references multiply (a memo bomb) runs out of this budget instead of memory.
        budget = Self.budget(pickle)
        try flatten(pickle.root, name: "", depth: 0, rootName: rootName)
    }

    private func malformed(_ reason: String, tensor: String? = nil) -> WSAMergeError {
        .malformed(file: file, tensor: tensor, reason: reason)
    }

    private mutating func spend() throws {
        budget -= 1
        guard budget >= 0 else { throw malformed("the pickle refers to its \(pickle.objects.count) objects more than \(Self.budget(pickle)) times (a memo bomb?)") }
    }

    /// Visits allowed: a tensor alone takes about seven objects (call, arguments, storage id, …).
    private static func budget(_ pickle: Pickle) -> Int { 4 * pickle.objects.count + 10_000 }

    private static func join(_ name: String, _ key: String) -> String { name.isEmpty ? key : name + "." + key }

    private mutating func flatten(_ value: PickleValue, name: String, depth: Int, rootName: String = "") throws {
        try spend()
        guard depth <= Self.maxDepth else { throw malformed("the pickle nests more than \(Self.maxDepth) levels deep at '\(printable(name))'") }
        guard case .object(let id) = value else {
            nonTensors.append(NonTensorLeaf(name: name, value: render(value, quoted: false)))
            return
        }
        let object = pickle[id]
        if isTensor(id) {
            tensors.append(try tensor(id, name: name.isEmpty ? rootName : name))
            return
        }
        guard !path.contains(id) else { throw malformed("the pickle holds a cycle at '\(printable(name))'") }
        path.insert(id)
        defer { path.remove(id) }
        switch object.kind {
        case .dict where !object.items.isEmpty:
            for (key, item) in zip(object.items, object.values) {
                try flatten(item, name: Self.join(name, keyText(key)), depth: depth + 1)
            }
        case .list, .tuple:
            if try containsTensor(id, depth: depth) {
                for (i, item) in object.items.enumerated() {
                    try flatten(item, name: Self.join(name, String(i)), depth: depth + 1)
                }
            } else {
                nonTensors.append(NonTensorLeaf(name: name, value: render(value, quoted: false)))
            }
        default:
            nonTensors.append(NonTensorLeaf(name: name, value: render(value, quoted: false)))
        }
    }

    private func keyText(_ key: PickleValue) -> String {
        switch key {
        case .string(let s): s
        case .int(let n): String(n)
        default: render(key, quoted: false)
        }
    }

    private func isTensor(_ id: Int) -> Bool {
        guard pickle[id].kind == .call, let callable = pickle[id].callable else { return false }
        return [.rebuildTensorV2, .rebuildTensorV3, .rebuildParameter, .rebuildParameterWithState].contains(callable)
    }

    /// Whether a list or tuple holds a tensor at any depth (cycles count as no).
    private mutating func containsTensor(_ id: Int, depth: Int) throws -> Bool {
        if let known = containsTensorMemo[id] { return known }
        guard depth <= Self.maxDepth else { throw malformed("the pickle nests more than \(Self.maxDepth) levels deep") }
        try spend()
        containsTensorMemo[id] = false
        var found = isTensor(id)
        let object = pickle[id]
        if !found, [.list, .tuple, .dict, .set].contains(object.kind) {
            for item in object.items + object.values {
                if case .object(let child) = item, try containsTensor(child, depth: depth + 1) {
                    found = true
                    break
                }
            }
        }
        containsTensorMemo[id] = found
        return found
    }

    // MARK: tensors

    private func tensor(_ id: Int, name: String) throws -> TorchTensorEntry {
        var node = pickle[id]
        // A Parameter wraps the tensor: _rebuild_parameter(tensor, requires_grad, hooks[, state]).
        var unwrap = 0
        while node.callable == .rebuildParameter || node.callable == .rebuildParameterWithState {
            unwrap += 1
            guard unwrap <= 4, let data = node.items.first, case .object(let inner) = data, isTensor(inner) else {
                throw malformed("a Parameter that does not wrap a tensor", tensor: name)
            }
            node = pickle[inner]
        }
        let v3 = node.callable == .rebuildTensorV3
        let args = node.items
        guard args.count == (v3 ? 7 : 6) || args.count == (v3 ? 8 : 7) else {
            throw malformed("\(node.callable!.name) with \(args.count) arguments", tensor: name)
        }
        // The storage: persistent id ('storage', storage type, key, location, numel).
        guard case .object(let pidObject) = args[0], pickle[pidObject].kind == .persistentID,
              case .object(let pidTuple) = pickle[pidObject].items[0], pickle[pidTuple].kind == .tuple,
              pickle[pidTuple].items.count == 5, pickle[pidTuple].items[0] == .string("storage"),
              case .global(.storage(let storageName, let storageDType)) = pickle[pidTuple].items[1],
              case .string(let key) = pickle[pidTuple].items[2],
              case .int(let storageElements) = pickle[pidTuple].items[4], storageElements >= 0 else {
            throw malformed("the tensor's storage is not a ('storage', type, key, location, numel) record", tensor: name)
        }
        let storageElementBytes = storageDType?.byteWidth ?? 1
        var dtype = storageDType ?? .U8
        if v3 {
            guard case .global(.dtype(let dtypeName, let mapped)) = args[6] else {
                throw malformed("_rebuild_tensor_v3 without a torch dtype", tensor: name)
            }
            guard let mapped else { throw malformed("dtype \(dtypeName) has no safetensors equivalent", tensor: name) }
            guard storageDType == nil else { throw malformed("_rebuild_tensor_v3 of a typed storage (\(storageName))", tensor: name) }
            dtype = mapped
        }
        guard case .int(let offset) = args[1], offset >= 0 else {
            throw malformed("storage offset is not a non-negative integer", tensor: name)
        }
        guard let shape = intTuple(args[2]), let rawStrides = intTuple(args[3]), shape.count == rawStrides.count else {
            throw malformed("size and stride are not integer tuples of one length", tensor: name)
        }
        guard shape.allSatisfy({ $0 >= 0 }), rawStrides.allSatisfy({ $0 >= 0 }) else {
            throw malformed("negative size \(shape) or stride \(rawStrides)", tensor: name)
        }
        let metadata = args.count == (v3 ? 8 : 7) ? args[args.count - 1] : .none
        if case .object(let meta) = metadata, pickle[meta].kind == .dict,
           zip(pickle[meta].items, pickle[meta].values).contains(where: { $0.1 == .bool(true) }) {
            throw malformed("the tensor was saved with its lazy conjugate or negative bit set (call .resolve_conj().resolve_neg() before saving)", tensor: name)
        }
        return TorchTensorEntry(name: name, dtype: dtype, shape: shape,
                                strides: zip(shape, rawStrides).map { $0 <= 1 ? 0 : $1 },
                                storageKey: key, storageElementBytes: storageElementBytes,
                                storageElements: storageElements, storageOffset: offset)
    }

    private func intTuple(_ value: PickleValue) -> [Int]? {
        guard case .object(let id) = value, [.tuple, .list].contains(pickle[id].kind) else { return nil }
        var out: [Int] = []
        for item in pickle[id].items {
            guard case .int(let n) = item else { return nil }
            out.append(n)
        }
        return out
    }

    // MARK: rendering non-tensor values

    /// A Python-like rendering, cut at `maxRendered` characters.
    func render(_ value: PickleValue, quoted: Bool) -> String {
        var out = ""
        var steps = 0
        render(value, quoted: quoted, into: &out, depth: 0, steps: &steps)
        if out.count > Self.maxRendered { out = String(out.prefix(Self.maxRendered)) + "…" }
        return out
    }

    private func render(_ value: PickleValue, quoted: Bool, into out: inout String, depth: Int, steps: inout Int) {
        steps += 1
        guard out.count <= Self.maxRendered, depth < 16, steps < 10_000 else { out += "…"; return }
        switch value {
        case .none: out += "None"
        case .bool(let b): out += b ? "True" : "False"
        case .int(let n): out += String(n)
        case .bigInt(let s): out += s
        case .float(let x): out += x.isNaN ? "nan" : x.isInfinite ? (x < 0 ? "-inf" : "inf") : String(x)
        case .string(let s): out += quoted ? "'" + printable(s) + "'" : printable(s)
        case .bytes(let b): out += "<\(b.count) bytes>"
        case .global(let g): out += g.name
        case .object(let id):
            let object = pickle[id]
            func list(_ items: [PickleValue], _ open: String, _ close: String) {
                out += open
                for (i, item) in items.enumerated() {
                    if i > 0 { out += ", " }
                    if out.count > Self.maxRendered { out += "…"; break }
                    render(item, quoted: true, into: &out, depth: depth + 1, steps: &steps)
                }
                if items.count == 1 && open == "(" { out += "," }
                out += close
            }
            switch object.kind {
            case .list: list(object.items, "[", "]")
            case .tuple: list(object.items, "(", ")")
            case .set: object.items.isEmpty ? (out += "set()") : list(object.items, "{", "}")
            case .dict:
                out += "{"
                for (i, (k, v)) in zip(object.items, object.values).enumerated() {
                    if i > 0 { out += ", " }
                    if out.count > Self.maxRendered { out += "…"; break }
                    render(k, quoted: true, into: &out, depth: depth + 1, steps: &steps)
                    out += ": "
                    render(v, quoted: true, into: &out, depth: depth + 1, steps: &steps)
                }
                out += "}"
            case .call:
                out += object.callable?.name ?? "?"
                list(object.items, "(", ")")
            case .persistentID: out += "<storage>"
            }
        }
    }
}

/// Opens PyTorch checkpoints (`torch.save` since 1.6: a zip holding `<prefix>/data.pkl` and
/// `<prefix>/data/<key>` storages) and the sharded `pytorch_model.bin.index.json` form. The
/// legacy raw-pickle format and TorchScript archives are recognised and refused with how to
/// re-save them.
enum PyTorchReader {
    static let maxPickleBytes = SafetensorsHeader.maxHeaderLength

    static let resave = "re-save it with torch.save(model.state_dict(), path) or safetensors.torch.save_file(model.state_dict(), path)"

    /// The first bytes of the legacy format: PROTO 2, then LONG1 of the magic number 0x1950a86a20f9469cfc6c.
    static let legacyMagic: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]

    /// The refusal of a file that is a raw pickle stream rather than a zip, or nil.
    static func rawPickleRefusal(_ head: [UInt8], path: String) -> WSAMergeError? {
        if head.starts(with: legacyMagic) {
            return .malformed(file: path, reason: "this is a PyTorch checkpoint in the legacy format (torch.save before 1.6 or _use_new_zipfile_serialization=False), which is read by unpickling; \(resave)")
        }
        if head.count >= 2, head[0] == 0x80, (2...5).contains(head[1]) {
            return .malformed(file: path, reason: "this is a raw Python pickle, not a checkpoint; nothing was unpickled (\(resave))")
        }
        return nil
    }

    /// The archive's `<prefix>/data.pkl` member when `zip` is a PyTorch (or TorchScript) archive.
    static func isPyTorchArchive(_ zip: StoredZip) -> Bool {
        zip.members.contains { $0.name == "data.pkl" || $0.name.hasSuffix("/data.pkl") }
    }

    /// Opens a zip that holds a `data.pkl` member.
    static func open(_ file: ReadableFile, zip: StoredZip) throws -> Checkpoint {
        let (sources, nonTensors) = try read(file, zip: zip)
        return Checkpoint(path: file.path, format: .pytorch, metadata: [:], sources: sources, files: [file], nonTensors: nonTensors)
    }

    /// Tensors (in the pickle's order) with where their bytes are, and the non-tensor leaves of one archive.
    static func read(_ file: ReadableFile, zip: StoredZip) throws -> ([any TensorSource], [NonTensorLeaf]) {
        let path = file.path
        var byName: [String: StoredZip.Member] = [:]
        for member in zip.members {
            guard byName.updateValue(member, forKey: member.name) == nil else {
                throw WSAMergeError.malformed(file: path, reason: "zip member '\(printable(member.name))' appears twice")
            }
        }
        let pickles = zip.members.filter { $0.name == "data.pkl" || $0.name.hasSuffix("/data.pkl") }
        guard pickles.count == 1, let pickleMember = pickles.first else {
            throw WSAMergeError.malformed(file: path, reason: "archive holds \(pickles.count) data.pkl members; a torch.save checkpoint holds one")
        }
        let prefix = String(pickleMember.name.dropLast("data.pkl".count))
        if byName[prefix + "constants.pkl"] != nil || zip.members.contains(where: { $0.name.hasPrefix(prefix + "code/") }) {
            throw WSAMergeError.malformed(file: path, reason: "this is a TorchScript archive (torch.jit.save), which holds code, not a weights-only checkpoint; load it with torch.jit.load and \(resave)")
        }
        var bigEndian = false
        if let order = byName[prefix + "byteorder"] {
            switch String(decoding: try zip.read(order, limit: 16), as: UTF8.self) {
            case "little": bigEndian = false
            case "big": bigEndian = true
            case let other: throw WSAMergeError.malformed(file: path, reason: "byteorder record says '\(printable(other))'")
            }
        }
        let pickle = try Pickle(bytes: try zip.read(pickleMember, limit: maxPickleBytes), file: path)
        var stem = baseName(of: path)
        if let dot = stem.lastIndex(of: "."), dot != stem.startIndex { stem = String(stem[..<dot]) }
        let contents = try TorchCheckpointContents(pickle: pickle, file: path, rootName: stem)

        var sources: [any TensorSource] = []
        var seen = Set<String>()
        var storageStart: [String: Int] = [:]
        for entry in contents.tensors {
            let name = entry.name
            guard seen.insert(name).inserted else {
                throw WSAMergeError.malformed(file: path, tensor: name, reason: "two tensors have this name")
            }
            let info = try TensorInfo(name: name, dtype: entry.dtype, shape: entry.shape, file: path)
            guard let member = byName[prefix + "data/" + entry.storageKey] else {
                throw WSAMergeError.malformed(file: path, tensor: name, reason: "its storage '\(printable(entry.storageKey))' is missing from the archive")
            }
            let start: Int
            if let known = storageStart[entry.storageKey] { start = known } else {
                start = try zip.dataOffset(of: member)
                storageStart[entry.storageKey] = start
            }
            let (declared, overflow) = entry.storageElements.multipliedReportingOverflow(by: entry.storageElementBytes)
            guard !overflow, declared == member.size else {
                throw WSAMergeError.malformed(file: path, tensor: name, reason: "its storage '\(printable(entry.storageKey))' holds \(member.size) bytes, but the pickle declares \(entry.storageElements) elements of \(entry.storageElementBytes) bytes")
            }
            sources.append(try locate(entry, info: info, file: file, storageStart: start, storageBytes: member.size, bigEndian: bigEndian))
        }
        return (sources, contents.nonTensors)
    }

    /// How many times its storage's bytes a view may declare, beyond 64 MiB.
    static let viewRepeats = 256

    /// The most bytes a view of a storage of `storageBytes` may declare: 256 × the storage + 64 MiB.
    static func maxViewBytes(storageBytes: Int) -> Int {
        let (scaled, overflow) = storageBytes.multipliedReportingOverflow(by: viewRepeats)
        return overflow ? Int.max : scaled.addingReportingOverflow(64 << 20).overflow ? Int.max : scaled + (64 << 20)
    }

    /// Checks that the view lies inside its storage (checked arithmetic) and says where its bytes are:
    /// a plain file slice when it is C-contiguous, a strided view otherwise.
    static func locate(_ entry: TorchTensorEntry, info: TensorInfo, file: ReadableFile, storageStart: Int, storageBytes: Int,
                       bigEndian: Bool = false) throws -> any TensorSource {
        let path = file.path, name = entry.name
        guard let width = entry.dtype.byteWidth else {
            throw WSAMergeError.malformed(file: path, tensor: name, reason: "sub-byte dtype \(entry.dtype.rawValue) in a PyTorch checkpoint")
        }
        if info.elementCount == 0 {
            return FileSlice(tensor: info, file: file, offset: storageStart)
        }
        // The last element the view touches: offset + Σ (size − 1) · stride.
        var last = entry.storageOffset
        for (size, stride) in zip(entry.shape, entry.strides) {
            let (step, o1) = (size - 1).multipliedReportingOverflow(by: stride)
            let (sum, o2) = last.addingReportingOverflow(step)
            guard !o1, !o2 else {
                throw WSAMergeError.malformed(file: path, tensor: name, reason: "its view (size \(entry.shape), stride \(entry.strides)) overflows")
            }
            last = sum
        }
        let (end, o3) = last.addingReportingOverflow(1)
        let (endBytes, o4) = end.multipliedReportingOverflow(by: width)
        guard !o3, !o4, endBytes <= storageBytes else {
            throw WSAMergeError.malformed(file: path, tensor: name, reason: "its view (offset \(entry.storageOffset), size \(entry.shape), stride \(entry.strides)) reaches past its storage '\(printable(entry.storageKey))' of \(storageBytes) bytes")
        }
        // A view may repeat its storage's elements (stride 0, overlapping rows), but one that
        // declares far more bytes than the file holds (a few bytes spread over terabytes) would
        // keep every reader busy for hours: refused.
        let viewBytes = info.elementCount.multipliedReportingOverflow(by: width)
        if viewBytes.overflow || viewBytes.partialValue > Self.maxViewBytes(storageBytes: storageBytes) {
            throw WSAMergeError.malformed(file: path, tensor: name, reason: "its view (size \(entry.shape), stride \(entry.strides)) declares \(viewBytes.overflow ? "more than 2^63" : String(viewBytes.partialValue)) bytes over a storage of \(storageBytes) bytes, more than \(Self.viewRepeats) times its storage plus 64 MiB (a view bomb?)")
        }
        var contiguous = true
        var expected = 1
        for (size, stride) in zip(entry.shape, entry.strides).reversed() where size > 1 {
            if stride != expected { contiguous = false; break }
            expected *= size
        }
        if contiguous {
            return FileSlice(tensor: info, file: file, offset: storageStart + entry.storageOffset * width, bigEndian: bigEndian)
        }
        return StridedSource(tensor: info, view: StridedView(file: file, base: storageStart, width: width, shape: entry.shape,
                                                             strides: entry.strides, offset: entry.storageOffset),
                             swapWidth: bigEndian ? info.dtype.swapWidth : 0)
    }

    /// A sharded checkpoint from its `pytorch_model.bin.index.json`: every shard is a PyTorch
    /// archive, read in the order of their names; the index's `weight_map` must list exactly the
    /// tensors of each shard.
    static func openSharded(index: ReadableFile, json: JSON) throws -> Checkpoint {
        var shards = try ShardIndex(index: index, json: json)
        var sources: [any TensorSource] = []
        var nonTensors: [NonTensorLeaf] = []
        var files: [ReadableFile] = [index]
        for shard in shards.shards {
            let file = try shards.open(shard)
            let archive = try StoredZip(file)
            guard isPyTorchArchive(archive) else {
                throw WSAMergeError.malformed(file: file.path, reason: "shard is not a PyTorch checkpoint (no data.pkl member)")
            }
            let (shardSources, leaves) = try read(file, zip: archive)
            files.append(file)
            nonTensors += leaves
            for source in shardSources {
                try shards.add(source.tensor.name, shard: shard, file: file.path)
                sources.append(source)
            }
        }
        try shards.checkComplete()
        return Checkpoint(path: index.path, format: .shardedPyTorch, metadata: shards.metadata, sources: sources, files: files, nonTensors: nonTensors)
    }
}
