/// A validated safetensors header: what the reference reader accepts (unknown fields in a
/// tensor entry are ignored, as there), plus a refusal of duplicate tensor names.
///
/// File layout: `u64 LE n`, `n` bytes of UTF-8 JSON, then the data buffer. Each tensor entry is
/// `{"dtype": CODE, "shape": [d…], "data_offsets": [begin, end]}` with offsets relative to the
/// buffer; sorted by offset, the tensors must tile the buffer exactly, without holes or overlaps.
public struct SafetensorsHeader: Sendable {
    /// Largest header accepted (the reference reader's limit).
    public static let maxHeaderLength = 100_000_000

    public struct Entry: Sendable {
        public let info: TensorInfo
        /// Offset of the data within the buffer.
        public let begin: Int
    }

    /// Tensors in storage order (ascending offset; ties in header order).
    public let entries: [Entry]
    public let metadata: [String: String]
    /// Byte length of the JSON header (`n`).
    public let headerLength: Int

    /// Offset in the file where the data buffer starts.
    public var dataStart: Int { 8 + headerLength }

    /// Reads the 8-byte length prefix, refusing lengths the file cannot hold.
    public static func headerLength(prefix: [UInt8], fileSize: Int, file: String) throws -> Int {
        guard fileSize >= 8, prefix.count >= 8 else {
            throw WSAMergeError.malformed(file: file, reason: "file is \(fileSize) bytes, too small for a safetensors header")
        }
        var n: UInt64 = 0
        for i in (0..<8).reversed() { n = n << 8 | UInt64(prefix[i]) }
        guard n <= UInt64(maxHeaderLength) else {
            throw WSAMergeError.malformed(file: file, reason: "header length \(n) exceeds the limit of \(maxHeaderLength) bytes")
        }
        guard Int(n) <= fileSize - 8 else {
            throw WSAMergeError.malformed(file: file, reason: "header length \(n) runs past the end of the file (\(fileSize) bytes)")
        }
        return Int(n)
    }

    /// Parses and validates header JSON; `bufferSize` is the number of bytes after the header.
    public init(json bytes: UnsafeRawBufferPointer, bufferSize: Int, file: String) throws {
        headerLength = bytes.count
        guard bytes.count > 0 else { throw WSAMergeError.malformed(file: file, reason: "header is empty") }
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw WSAMergeError.malformed(file: file, reason: "header is not valid UTF-8")
        }
        // Read with the pull reader, straight into entries: no `JSON` tree of the whole header,
        // so memory stays a small multiple of the header (a shape of millions of numbers is
        // refused at its 65th, never held).
        var metadata: [String: String] = [:]
        var entries: [Entry] = []
        var ends: [Int] = []
        var names = Set<ByteKey>()
        var reader = JSONReader(bytes)
        do {
            guard try reader.peekKind() == .object else {
                try reader.skipValue()
                try reader.finish()
                throw WSAMergeError.malformed(file: file, reason: "header is not a JSON object")
            }
            try reader.readObject { reader, key, keyOffset in
                guard names.insert(ByteKey(key)).inserted else {
                    throw JSONParseError(offset: keyOffset, reason: "duplicate key '\(key)'")
                }
                if key == "__metadata__" {
                    switch try reader.peekKind() {
                    case .null:
                        _ = try reader.readValue()
                    case .object:
                        var keys = Set<ByteKey>()
                        try reader.readObject { reader, k, offset in
                            guard keys.insert(ByteKey(k)).inserted else { throw JSONParseError(offset: offset, reason: "duplicate key '\(k)'") }
                            guard case .string(let v) = try reader.readValue() else {
                                throw WSAMergeError.malformed(file: file, reason: "__metadata__ value of '\(k)' is not a string")
                            }
                            metadata[k] = v
                        }
                    default:
                        throw WSAMergeError.malformed(file: file, reason: "__metadata__ is not an object of strings")
                    }
                    return
                }
                let (entry, end) = try Self.entry(named: key, &reader, file: file)
                entries.append(entry)
                ends.append(end)
            }
            try reader.finish()
        } catch let error as JSONParseError {
            throw WSAMergeError.malformed(file: file, reason: "header is not valid JSON: \(error)")
        }
        // Storage order: by (begin, end), ties kept in header order.
        let order = entries.indices.sorted { a, b in
            (entries[a].begin, ends[a], a) < (entries[b].begin, ends[b], b)
        }
        var expected = 0
        for i in order {
            let entry = entries[i]
            guard entry.begin == expected else {
                let what = entry.begin < expected ? "overlaps the previous tensor" : "leaves a hole before it"
                throw WSAMergeError.malformed(file: file, tensor: entry.info.name,
                                 reason: "data_offsets begin at \(entry.begin) but the previous tensor ends at \(expected): \(what)")
            }
            expected = ends[i]
        }
        guard expected == bufferSize else {
            let what = expected < bufferSize ? "\(bufferSize - expected) trailing bytes after the last tensor" : "file is truncated"
            throw WSAMergeError.malformed(file: file, reason: "tensor data ends at \(expected) but the buffer holds \(bufferSize) bytes: \(what)")
        }
        self.entries = order.map { entries[$0] }
        self.metadata = metadata
    }

    private static func entry(named name: String, _ reader: inout JSONReader, file: String) throws -> (Entry, Int) {
        guard try reader.peekKind() == .object else {
            throw WSAMergeError.malformed(file: file, tensor: name, reason: "entry is not a JSON object")
        }
        var dtype: DType?
        var shape: [Int]?
        var offsets: [Int]?
        var fields: [String] = []
        try reader.readObject { reader, key, keyOffset in
            if fields.count < 64 {
                guard !fields.contains(where: { $0.utf8.elementsEqual(key.utf8) }) else {
                    throw JSONParseError(offset: keyOffset, reason: "duplicate key '\(key)'")
                }
                fields.append(key)
            }
            switch key {
            case "dtype":
                guard case .string(let code) = try reader.readValue() else {
                    throw WSAMergeError.malformed(file: file, tensor: name, reason: "dtype is not a string")
                }
                guard let parsed = DType(rawValue: code) else {
                    throw WSAMergeError.malformed(file: file, tensor: name, reason: "unknown dtype '\(code)'")
                }
                dtype = parsed
            case "shape":
                let (dims, count) = try nonNegativeIntegers(&reader, keep: TensorInfo.maxRank, what: "shape", name: name, file: file)
                guard count <= TensorInfo.maxRank else {
                    throw WSAMergeError.malformed(file: file, tensor: name,
                                                  reason: "shape has \(count) dimensions; at most \(TensorInfo.maxRank) are supported (numpy's limit)")
                }
                shape = dims
            case "data_offsets":
                let (pair, count) = try nonNegativeIntegers(&reader, keep: 2, what: "data_offsets", name: name, file: file)
                guard count == 2 else {
                    throw WSAMergeError.malformed(file: file, tensor: name, reason: "data_offsets has \(count) numbers, expected 2")
                }
                offsets = pair
            default:
                try reader.skipValue()  // Unknown fields are ignored, as the reference reader does.
            }
        }
        guard let dtype else { throw WSAMergeError.malformed(file: file, tensor: name, reason: "entry has no dtype") }
        guard let shape else { throw WSAMergeError.malformed(file: file, tensor: name, reason: "entry has no shape") }
        guard let offsets else { throw WSAMergeError.malformed(file: file, tensor: name, reason: "entry has no data_offsets") }
        let info = try TensorInfo(name: name, dtype: dtype, shape: shape, file: file)
        guard offsets[1] >= offsets[0] else {
            throw WSAMergeError.malformed(file: file, tensor: name, reason: "data_offsets end \(offsets[1]) is before begin \(offsets[0])")
        }
        guard offsets[1] - offsets[0] == info.byteCount else {
            throw WSAMergeError.malformed(file: file, tensor: name,
                             reason: "data_offsets span \(offsets[1] - offsets[0]) bytes but shape \(shape) of \(dtype.rawValue) needs \(info.byteCount)")
        }
        return (Entry(info: info, begin: offsets[0]), offsets[1])
    }

    /// Reads an array of non-negative integers, keeping the first `keep` of them; returns them
    /// and how many there were (every item is checked, none beyond `keep` is held).
    private static func nonNegativeIntegers(_ reader: inout JSONReader, keep: Int, what: String, name: String,
                                            file: String) throws -> ([Int], Int) {
        guard try reader.peekKind() == .array else {
            throw WSAMergeError.malformed(file: file, tensor: name, reason: "\(what) is not an array")
        }
        var result: [Int] = []
        var count = 0
        try reader.readArray { reader in
            let item = try reader.readValue()
            switch item {
            case .int(let n) where n >= 0:
                if count < keep { result.append(n) }
                count += 1
            case .double(let d) where d >= 0x1p63 && d == d.rounded():
                throw WSAMergeError.malformed(file: file, tensor: name, reason: "\(what) value \(d) overflows")
            default:
                throw WSAMergeError.malformed(file: file, tensor: name, reason: "\(what) must hold non-negative integers, found \(item.text)")
            }
        }
        return (result, count)
    }
}
