/// A validated `.npy` header (format versions 1.0, 2.0 and 3.0).
///
/// Layout: `\x93NUMPY`, major, minor, header length (u16 LE in 1.0, u32 LE after), then a Python
/// dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces
/// and a newline. The literal is read by a small strict parser; nothing is ever evaluated, and
/// object, string, datetime, void and structured descrs are refused (no pickle is read).
public struct NpyHeader: Sendable, Equatable {
    public static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY
    /// Largest header accepted (numpy itself refuses more than 10,000 bytes by default).
    public static let maxHeaderLength = 100_000

    public let dtype: DType
    public let bigEndian: Bool
    public let fortranOrder: Bool
    public let shape: [Int]
    /// Offset of the array data from the start of the file.
    public let dataOffset: Int

    /// Bytes needed to know the header's length.
    public static let prefixLength = 12

    /// Reads the magic, version and header length from the first bytes of a file.
    /// - Returns: the version's major number and the offset where the data begins.
    public static func dataOffset(prefix: [UInt8], file: String) throws -> (major: UInt8, offset: Int) {
        guard prefix.starts(with: magic) || magic.starts(with: prefix), !prefix.isEmpty else {
            throw WSAMergeError.malformed(file: file, reason: "not a .npy file (bad magic)")
        }
        guard prefix.count >= 10 else {
            throw WSAMergeError.malformed(file: file, reason: ".npy header is truncated (the file ends after \(prefix.count) bytes)")
        }
        let major = prefix[6], minor = prefix[7]
        switch (major, minor) {
        case (1, 0):
            return (1, 10 + (Int(prefix[8]) | Int(prefix[9]) << 8))
        case (2, 0), (3, 0):
            guard prefix.count >= 12 else { throw WSAMergeError.malformed(file: file, reason: ".npy header is truncated") }
            let n = Int(prefix[8]) | Int(prefix[9]) << 8 | Int(prefix[10]) << 16 | Int(prefix[11]) << 24
            guard n <= maxHeaderLength else {
                throw WSAMergeError.malformed(file: file, reason: ".npy header length \(n) exceeds the limit of \(maxHeaderLength) bytes")
            }
            return (major, 12 + n)
        default:
            throw WSAMergeError.malformed(file: file, reason: "unsupported .npy format version \(major).\(minor)")
        }
    }

    /// Parses the header from the first `dataOffset` bytes of a file.
    public init(bytes: [UInt8], file: String) throws {
        let (major, offset) = try Self.dataOffset(prefix: bytes, file: file)
        guard bytes.count >= offset else {
            throw WSAMergeError.malformed(file: file, reason: ".npy header is truncated (\(bytes.count) of \(offset) bytes)")
        }
        let start = major == 1 ? 10 : 12
        let text: String
        if major == 3 {
            guard let utf8 = String(validating: bytes[start..<offset], as: UTF8.self) else {
                throw WSAMergeError.malformed(file: file, reason: ".npy header is not valid UTF-8")
            }
            text = utf8
        } else {
            text = String(bytes[start..<offset].map { Character(Unicode.Scalar($0)) })  // latin-1
        }
        var parser = DictLiteralParser(text: text, file: file)
        let dict = try parser.parseHeaderDict()
        guard case .string(let descr)? = dict["descr"] else {
            if case .other(let what)? = dict["descr"] {
                throw WSAMergeError.malformed(file: file, reason: "structured dtype (\(what)) is not supported")
            }
            throw WSAMergeError.malformed(file: file, reason: ".npy descr is not a string")
        }
        guard case .bool(let fortran)? = dict["fortran_order"] else {
            throw WSAMergeError.malformed(file: file, reason: ".npy fortran_order is not True or False")
        }
        guard case .tuple(let shape)? = dict["shape"] else {
            throw WSAMergeError.malformed(file: file, reason: ".npy shape is not a tuple of integers")
        }
        let (dtype, bigEndian) = try Self.parseDescr(descr, file: file)
        self.dtype = dtype
        self.bigEndian = bigEndian
        self.fortranOrder = fortran
        self.shape = shape
        self.dataOffset = offset
    }

    /// Maps a numpy type string (`<f4`, `|b1`, `>i8`, …) to a dtype and its byte order.
    public static func parseDescr(_ descr: String, file: String) throws -> (DType, bigEndian: Bool) {
        var chars = Array(descr)
        var order: Character = "="
        if let first = chars.first, "<>|=".contains(first) {
            order = first
            chars.removeFirst()
        }
        guard let kind = chars.first else { throw WSAMergeError.malformed(file: file, reason: "empty descr") }
        let size = Int(String(chars.dropFirst()))
        switch kind {
        case "O": throw WSAMergeError.malformed(file: file, reason: "object arrays (descr '\(descr)') are refused: reading them would need pickle")
        case "S", "a", "U": throw WSAMergeError.malformed(file: file, reason: "string arrays (descr '\(descr)') are not supported")
        case "M", "m": throw WSAMergeError.malformed(file: file, reason: "datetime arrays (descr '\(descr)') are not supported")
        case "V": throw WSAMergeError.malformed(file: file, reason: "void/structured arrays (descr '\(descr)') are not supported")
        default: break
        }
        let table: [String: DType] = [
            "b1": .BOOL, "u1": .U8, "i1": .I8, "u2": .U16, "i2": .I16, "f2": .F16,
            "u4": .U32, "i4": .I32, "f4": .F32, "u8": .U64, "i8": .I64, "f8": .F64, "c8": .C64,
        ]
        guard let size, let dtype = table["\(kind)\(size)"] else {
            throw WSAMergeError.malformed(file: file, reason: "unsupported descr '\(descr)'")
        }
        if order == "|" && size > 1 {
            throw WSAMergeError.malformed(file: file, reason: "descr '\(descr)' has no byte order for a multi-byte type")
        }
        return (dtype, order == ">")
    }
}

/// The Python literal subset an `.npy` header uses.
enum PyLiteral: Equatable {
    case string(String)
    case bool(Bool)
    case tuple([Int])
    /// Something valid but not expected here (a list, a number, None).
    case other(String)
}

/// A strict parser of `{'key': value, ...}` with string, bool and integer-tuple values.
struct DictLiteralParser {
    private let chars: [Character]
    private var i = 0
    private let file: String

    init(text: String, file: String) {
        chars = Array(text)
        self.file = file
    }

    private func fail(_ what: String) -> WSAMergeError {
        .malformed(file: file, reason: ".npy header is malformed: \(what)")
    }

    private mutating func skipSpace() {
        while i < chars.count, chars[i] == " " || chars[i] == "\t" || chars[i] == "\n" || chars[i] == "\r" { i += 1 }
    }

    private mutating func take(_ c: Character) -> Bool {
        skipSpace()
        if i < chars.count, chars[i] == c { i += 1; return true }
        return false
    }

    mutating func parseHeaderDict() throws -> [String: PyLiteral] {
        guard take("{") else { throw fail("expected '{'") }
        var dict: [String: PyLiteral] = [:]
        while true {
            if take("}") { break }
            skipSpace()
            let key = try parseString()
            guard take(":") else { throw fail("expected ':' after '\(key)'") }
            let value = try parseValue()
            guard ["descr", "fortran_order", "shape"].contains(key) else { throw fail("unexpected key '\(key)'") }
            guard dict.updateValue(value, forKey: key) == nil else { throw fail("duplicate key '\(key)'") }
            if take("}") { break }
            guard take(",") else { throw fail("expected ',' or '}'") }
        }
        skipSpace()
        guard i == chars.count else { throw fail("unexpected text after the dictionary") }
        for key in ["descr", "fortran_order", "shape"] where dict[key] == nil {
            throw fail("missing key '\(key)'")
        }
        return dict
    }

    private mutating func parseString() throws -> String {
        skipSpace()
        guard i < chars.count, chars[i] == "'" || chars[i] == "\"" else { throw fail("expected a quoted string") }
        let quote = chars[i]
        i += 1
        var s = ""
        while i < chars.count, chars[i] != quote {
            guard chars[i] != "\\", chars[i] != "\n" else { throw fail("escapes are not supported in strings") }
            s.append(chars[i])
            i += 1
        }
        guard i < chars.count else { throw fail("unterminated string") }
        i += 1
        return s
    }

    private mutating func parseValue() throws -> PyLiteral {
        skipSpace()
        guard i < chars.count else { throw fail("missing value") }
        switch chars[i] {
        case "'", "\"":
            return .string(try parseString())
        case "(":
            i += 1
            var items: [Int] = []
            while true {
                if take(")") { break }
                items.append(try parseInteger())
                if take(")") {
                    // `(6)` is the integer 6 in Python, not a tuple (numpy refuses it as a shape)
                    if items.count == 1 { return .other("a parenthesised integer") }
                    break
                }
                guard take(",") else { throw fail("expected ',' or ')' in shape") }
            }
            return .tuple(items)
        case "[":
            // A structured dtype's field list: skip it balanced, report it as unsupported.
            var depth = 0
            let start = i
            repeat {
                if chars[i] == "[" { depth += 1 } else if chars[i] == "]" { depth -= 1 }
                i += 1
            } while depth > 0 && i < chars.count
            guard depth == 0 else { throw fail("unterminated list") }
            let text = String(chars[start..<i])
            if text.contains("'O'") || text.contains("|O") { throw WSAMergeError.malformed(file: file, reason: "structured dtype with object fields is refused: reading it would need pickle") }
            return .other("a list of fields")
        default:
            let start = i
            while i < chars.count, chars[i].isLetter || chars[i].isNumber || chars[i] == "_" || chars[i] == "-" { i += 1 }
            let word = String(chars[start..<i])
            switch word {
            case "True": return .bool(true)
            case "False": return .bool(false)
            case "": throw fail("unexpected character '\(chars[i])'")
            default: return .other(word)
            }
        }
    }

    private mutating func parseInteger() throws -> Int {
        skipSpace()
        let start = i
        while i < chars.count, chars[i].isASCII, chars[i].isNumber { i += 1 }
        guard i > start else { throw fail("shape must hold non-negative integers") }
        guard let value = Int(String(chars[start..<i])) else { throw fail("shape dimension overflows") }
        if i < chars.count, chars[i] == "L" { i += 1 }  // a Python 2 long (`(2L, 3L)`), as numpy still reads
        return value
    }
}
