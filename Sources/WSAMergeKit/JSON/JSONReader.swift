/// A pull reader over JSON text, for documents too large to hold as a `JSON` tree (safetensors
/// headers of a million tensors, scope documents): the caller walks objects and arrays member by
/// member and keeps only what it needs; `skipValue` checks a value without building it. The text
/// is validated as strictly as `JSON.parse` (duplicate keys excepted: the caller checks the keys
/// of the objects it walks; values read or skipped whole are checked as usual).
struct JSONReader {
    enum Kind { case object, array, string, number, bool, null }

    private var parser: JSONParser

    init(_ bytes: UnsafeRawBufferPointer) {
        parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
    }

    /// The kind of the next value.
    mutating func peekKind() throws -> Kind {
        parser.skipWhitespace()
        guard let c = parser.peek else { throw parser.error("unexpected end of JSON") }
        switch c {
        case UInt8(ascii: "{"): return .object
        case UInt8(ascii: "["): return .array
        case UInt8(ascii: "\""): return .string
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return .bool
        case UInt8(ascii: "n"): return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        default: throw parser.error("unexpected character '\(Character(Unicode.Scalar(c)))'")
        }
    }

    /// Walks an object: `member` is called with each key (and its offset) and must consume the value.
    mutating func readObject(_ member: (inout JSONReader, String, Int) throws -> Void) throws {
        guard try peekKind() == .object else { throw parser.error("expected an object") }
        parser.index += 1
        parser.skipWhitespace()
        if parser.peek == UInt8(ascii: "}") { parser.index += 1; return }
        while true {
            parser.skipWhitespace()
            guard parser.peek == UInt8(ascii: "\"") else { throw parser.error("expected a string key") }
            let keyOffset = parser.index
            let key = try parser.parseString()
            parser.skipWhitespace()
            guard parser.peek == UInt8(ascii: ":") else { throw parser.error("expected ':'") }
            parser.index += 1
            parser.skipWhitespace()
            try member(&self, key, keyOffset)
            parser.skipWhitespace()
            switch parser.peek {
            case UInt8(ascii: ","): parser.index += 1
            case UInt8(ascii: "}"): parser.index += 1; return
            default: throw parser.error("expected ',' or '}'")
            }
        }
    }

    /// Walks an array: `element` is called for each item and must consume it.
    mutating func readArray(_ element: (inout JSONReader) throws -> Void) throws {
        guard try peekKind() == .array else { throw parser.error("expected an array") }
        parser.index += 1
        parser.skipWhitespace()
        if parser.peek == UInt8(ascii: "]") { parser.index += 1; return }
        while true {
            parser.skipWhitespace()
            try element(&self)
            parser.skipWhitespace()
            switch parser.peek {
            case UInt8(ascii: ","): parser.index += 1
            case UInt8(ascii: "]"): parser.index += 1; return
            default: throw parser.error("expected ',' or ']'")
            }
        }
    }

    /// The next value as a `JSON` tree (for small values).
    mutating func readValue() throws -> JSON {
        parser.skipWhitespace()
        return try parser.parseValue(depth: 1)
    }

    /// Checks the next value without keeping it (nesting bounded as in `JSON.parse`).
    mutating func skipValue(depth: Int = 0) throws {
        guard depth < JSONParser.maxDepth else { throw parser.error("JSON nested too deeply") }
        switch try peekKind() {
        case .object:
            var keys: [String] = []
            var large = Set<ByteKey>()
            try readObject { reader, key, keyOffset in
                // Duplicate keys refused as JSON.parse does (byte-wise).
                if keys.count < 16 {
                    if keys.contains(where: { $0.utf8.elementsEqual(key.utf8) }) {
                        throw JSONParseError(offset: keyOffset, reason: "duplicate key '\(key)'")
                    }
                    keys.append(key)
                    if keys.count == 16 { large = Set(keys.map(ByteKey.init)) }
                } else if !large.insert(ByteKey(key)).inserted {
                    throw JSONParseError(offset: keyOffset, reason: "duplicate key '\(key)'")
                }
                try reader.skipValue(depth: depth + 1)
            }
        case .array:
            try readArray { reader in try reader.skipValue(depth: depth + 1) }
        case .string:
            _ = try parser.parseString()
        default:
            _ = try parser.parseValue(depth: depth)
        }
    }

    /// Checks that nothing but white space follows.
    mutating func finish() throws {
        parser.skipWhitespace()
        guard parser.index == parser.bytes.count else { throw parser.error("trailing characters after the JSON value") }
    }
}

/// A string compared and hashed by its UTF-8 bytes (Swift's `String` equality is canonical
/// equivalence, under which the NFC and NFD spellings of a name are equal; JSON keys and tensor
/// names are not). No copy of the string's storage is made.
struct ByteKey: Hashable, Sendable {
    let string: String
    init(_ string: String) { self.string = string }

    static func == (a: ByteKey, b: ByteKey) -> Bool { a.string.utf8.elementsEqual(b.string.utf8) }

    func hash(into hasher: inout Hasher) {
        var copy = string
        copy.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
