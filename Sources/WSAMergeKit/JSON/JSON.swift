/// A JSON value whose objects keep their key order, so reports list fields in a stable,
/// documented order and identical inputs give byte-identical text.
public enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    /// An integer written without a fraction or exponent.
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (lhs: JSON, rhs: JSON) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case (.bool(let a), .bool(let b)): a == b
        case (.int(let a), .int(let b)): a == b
        case (.double(let a), .double(let b)): a == b || (a.isNaN && b.isNaN)
        case (.string(let a), .string(let b)): a == b
        case (.array(let a), .array(let b)): a == b
        case (.object(let a), .object(let b)): a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    /// A finite double, or `null` for NaN, infinities and `nil`.
    public static func number(_ value: Double?) -> JSON {
        guard let value, value.isFinite else { return .null }
        return .double(value)
    }

    /// The member named `key` of an object.
    public subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { a } else { nil } }
    public var objectValue: [(String, JSON)]? { if case .object(let o) = self { o } else { nil } }
    /// An integer value (also a double with an exact integer value).
    public var intValue: Int? {
        switch self {
        case .int(let i): i
        case .double(let d): Int(exactly: d)
        default: nil
        }
    }
    public var doubleValue: Double? {
        switch self {
        case .int(let i): Double(i)
        case .double(let d): d
        default: nil
        }
    }
}

// MARK: - Writing

extension JSON {
    /// Compact JSON text (no spaces), keys in their stored order. Doubles use the shortest text
    /// that reads back to the same value.
    public var text: String {
        var out = ""
        write(to: &out)
        return out
    }

    public func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if !d.isFinite { out += "null" } else { out += d.description }
        case .string(let s): JSON.writeString(s, to: &out)
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.write(to: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                JSON.writeString(key, to: &out)
                out += ":"
                value.write(to: &out)
            }
            out += "}"
        }
    }

    static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

// MARK: - Reading

extension JSON {
    /// Parses JSON text strictly (RFC 8259): one value, surrounding white space allowed, duplicate
    /// object keys refused, integers that do not fit `Int` kept as doubles, nesting bounded.
    ///
    /// - Throws: a reason string on the first problem (the caller adds the file name).
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws -> JSON {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw parser.error("trailing characters after the JSON value") }
        return value
    }

    public static func parse(_ text: String) throws -> JSON {
        var copy = text
        return try copy.withUTF8 { buffer throws in try parse(UnsafeRawBufferPointer(buffer)) }
    }
}

/// Why JSON text was refused, with the byte offset.
public struct JSONParseError: Error, CustomStringConvertible, Sendable {
    public let offset: Int
    public let reason: String
    public var description: String { "\(reason) at byte \(offset)" }
}

struct JSONParser {
    let bytes: UnsafeRawBufferPointer
    var index = 0
    static let maxDepth = 128

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    func error(_ reason: String) -> JSONParseError { JSONParseError(offset: index, reason: reason) }

    var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

    mutating func skipWhitespace() {
        while let c = peek, c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { index += 1 }
    }

    mutating func expect(_ literal: StaticString) throws {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("unexpected end of JSON") }
        for i in 0..<count where bytes[index + i] != literal.utf8Start[i] {
            throw error("invalid literal")
        }
        index += count
    }

    mutating func parseValue(depth: Int) throws -> JSON {
        guard depth < JSONParser.maxDepth else { throw error("JSON nested too deeply") }
        guard let c = peek else { throw error("unexpected end of JSON") }
        switch c {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw error("unexpected character '\(Character(Unicode.Scalar(c)))'")
        }
    }

    /// Members and items of the objects and arrays being parsed, as a stack: a finished one is
    /// copied out into an array of exactly its size, so no array keeps the spare capacity of its
    /// growth (which, over millions of small objects, multiplied the memory of a parse).
    var memberStack: [(String, JSON)] = []
    var itemStack: [JSON] = []

    mutating func parseObject(depth: Int) throws -> JSON {
        let objectStart = index
        index += 1
        skipWhitespace()
        if peek == UInt8(ascii: "}") { index += 1; return .object([]) }
        let base = memberStack.count
        defer { memberStack.removeSubrange(base...) }
        while true {
            skipWhitespace()
            guard peek == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let keyOffset = index
            let key = try parseString()
            // Keys compare byte-wise, as other JSON readers do (NFC and NFD spellings differ).
            // Small objects are checked as they grow, large ones once, sorted, at the end.
            if memberStack.count - base <= 16 {
                for k in base..<memberStack.count where memberStack[k].0.utf8.elementsEqual(key.utf8) {
                    throw JSONParseError(offset: keyOffset, reason: "duplicate key '\(key)'")
                }
            }
            skipWhitespace()
            guard peek == UInt8(ascii: ":") else { throw error("expected ':'") }
            index += 1
            skipWhitespace()
            let value = try parseValue(depth: depth + 1)
            memberStack.append((key, value))
            skipWhitespace()
            switch peek {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "}"):
                index += 1
                let count = memberStack.count - base
                if count > 17 {
                    var order = Array(0..<Int32(count))
                    memberStack.withUnsafeBufferPointer { members in
                        order.sort { a, b in members[base + Int(a)].0.utf8.lexicographicallyPrecedes(members[base + Int(b)].0.utf8) }
                    }
                    for k in order.indices.dropFirst() {
                        let a = memberStack[base + Int(order[k - 1])].0, b = memberStack[base + Int(order[k])].0
                        if a.utf8.elementsEqual(b.utf8) {
                            throw JSONParseError(offset: objectStart, reason: "duplicate key '\(b)' in the object")
                        }
                    }
                }
                return .object(Array(memberStack[base...]))
            default: throw error("expected ',' or '}'")
            }
        }
    }

    mutating func parseArray(depth: Int) throws -> JSON {
        index += 1
        skipWhitespace()
        if peek == UInt8(ascii: "]") { index += 1; return .array([]) }
        let base = itemStack.count
        defer { itemStack.removeSubrange(base...) }
        while true {
            skipWhitespace()
            let item = try parseValue(depth: depth + 1)
            itemStack.append(item)
            skipWhitespace()
            switch peek {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "]"): index += 1; return .array(Array(itemStack[base...]))
            default: throw error("expected ',' or ']'")
            }
        }
    }

    mutating func parseString() throws -> String {
        index += 1
        let start = index
        // Fast path: no escapes.
        while let c = peek, c != UInt8(ascii: "\""), c != UInt8(ascii: "\\") {
            guard c >= 0x20 else { throw error("control character in string") }
            index += 1
        }
        guard let stop = peek else { throw error("unterminated string") }
        var scalars = String.UnicodeScalarView()
        guard let head = String(validating: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self) else {
            throw error("string is not valid UTF-8")
        }
        if stop == UInt8(ascii: "\"") { index += 1; return head }
        scalars.append(contentsOf: head.unicodeScalars)
        while true {
            guard let c = peek else { throw error("unterminated string") }
            if c == UInt8(ascii: "\"") { index += 1; break }
            if c == UInt8(ascii: "\\") {
                index += 1
                guard let e = peek else { throw error("unterminated string") }
                index += 1
                switch e {
                case UInt8(ascii: "\""): scalars.append("\"")
                case UInt8(ascii: "\\"): scalars.append("\\")
                case UInt8(ascii: "/"): scalars.append("/")
                case UInt8(ascii: "b"): scalars.append("\u{8}")
                case UInt8(ascii: "f"): scalars.append("\u{C}")
                case UInt8(ascii: "n"): scalars.append("\n")
                case UInt8(ascii: "r"): scalars.append("\r")
                case UInt8(ascii: "t"): scalars.append("\t")
                case UInt8(ascii: "u"):
                    var code = try parseHex4()
                    if (0xD800..<0xDC00).contains(code) {
                        guard peek == UInt8(ascii: "\\"), index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "u") else {
                            throw error("unpaired surrogate in string")
                        }
                        index += 2
                        let low = try parseHex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw error("unpaired surrogate in string") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let scalar = Unicode.Scalar(code) else { throw error("invalid \\u escape") }
                    scalars.append(scalar)
                default: throw error("invalid escape in string")
                }
                continue
            }
            // A run of plain bytes up to the next quote or escape.
            let runStart = index
            while let d = peek, d != UInt8(ascii: "\""), d != UInt8(ascii: "\\") {
                guard d >= 0x20 else { throw error("control character in string") }
                index += 1
            }
            guard let run = String(validating: UnsafeRawBufferPointer(rebasing: bytes[runStart..<index]), as: UTF8.self) else {
                throw error("string is not valid UTF-8")
            }
            scalars.append(contentsOf: run.unicodeScalars)
        }
        return String(scalars)
    }

    mutating func parseHex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("unterminated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[index]
            let digit: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("invalid \\u escape")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }

    mutating func parseNumber() throws -> JSON {
        let start = index
        var isInteger = true
        if peek == UInt8(ascii: "-") { index += 1 }
        guard let first = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else { throw error("invalid number") }
        if first == UInt8(ascii: "0") {
            index += 1
        } else {
            while let c = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) { index += 1 }
        }
        if peek == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard let c = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) else { throw error("invalid number") }
            while let c = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) { index += 1 }
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { index += 1 }
            guard let c = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) else { throw error("invalid number") }
            while let c = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) { index += 1 }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        if isInteger, let value = Int(text) { return .int(value) }
        guard let value = Double(text) else { throw error("invalid number") }
        return .double(value)
    }
}
