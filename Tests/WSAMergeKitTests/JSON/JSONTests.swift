import Testing
@testable import WSAMergeKit

/// The strict JSON reader (headers, indexes) and the compact writer (reports).
@Suite struct JSONTests {
    func refuses(_ text: String, _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let value = try JSON.parse(text)
            Issue.record("accepted \(text.debugDescription) as \(value.text)", sourceLocation: sourceLocation)
        } catch let error as JSONParseError {
            #expect(error.reason.contains(reason), "\(text.debugDescription): \(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func parsesNestedValuesKeepingKeyOrder() throws {
        let value = try JSON.parse(#" {"z": [1, -2.5, true, false, null, {"a": []}], "a": {"b": {"c": "d"}}, "m": {}} "#)
        #expect(value.objectValue?.map(\.0) == ["z", "a", "m"])
        #expect(value["z"] == .array([.int(1), .double(-2.5), .bool(true), .bool(false), .null, .object([("a", .array([]))])]))
        #expect(value["a"]?["b"]?["c"]?.stringValue == "d")
        #expect(value["m"] == .object([]))
        #expect(value["missing"] == nil)
        #expect(try JSON.parse("\t\r\n 7 \n") == .int(7))
    }

    @Test func numbers() throws {
        #expect(try JSON.parse("0") == .int(0))
        #expect(try JSON.parse("-0") == .int(0))
        #expect(try JSON.parse("9223372036854775807") == .int(Int.max))
        #expect(try JSON.parse("-9223372036854775808") == .int(Int.min))
        // Integers beyond Int are kept as doubles, so a caller can tell them apart and refuse them.
        #expect(try JSON.parse("9223372036854775808") == .double(0x1p63))
        #expect(try JSON.parse("18446744073709551616") == .double(0x1p64))
        #expect(try JSON.parse("-99999999999999999999") == .double(-1e20))
        #expect(try JSON.parse("1.5e3") == .double(1500))
        #expect(try JSON.parse("1E-2") == .double(0.01))
        #expect(try JSON.parse("2e+2") == .double(200))
        #expect(try JSON.parse("1.0") == .double(1))
        #expect(try JSON.parse("1.0").intValue == 1)
        #expect(try JSON.parse("1.5").intValue == nil)
        for bad in ["01", "1.", ".5", "+1", "1e", "1e+", "-", "--1", "0x10", "NaN", "Infinity", "-Infinity", "1_000"] {
            #expect(throws: JSONParseError.self, "\(bad)") { try JSON.parse(bad) }
        }
    }

    @Test func stringEscapes() throws {
        #expect(try JSON.parse(#""a\"b\\c\/d\be\ff\ng\rh\ti""#) == .string("a\"b\\c/d\u{8}e\u{C}f\ng\rh\ti"))
        #expect(try JSON.parse(#""\u00e9\u4E2D\u0000""#) == .string("é中\u{0}"))
        #expect(try JSON.parse(#""\ud83d\ude00 x""#) == .string("😀 x"))
        #expect(try JSON.parse("\"héllo 中文 😀\"") == .string("héllo 中文 😀"))
        refuses(#""\ud83d""#, "unpaired surrogate")
        refuses(#""\ud83d\u0041""#, "unpaired surrogate")
        refuses(#""\ude00""#, #"invalid \u escape"#)
        refuses(#""\x41""#, "invalid escape")
        refuses(#""\u12G4""#, #"invalid \u escape"#)
        refuses(#""\u12""#, #"unterminated \u escape"#)
        refuses("\"tab\there\"", "control character")
        refuses("\"new\nline\"", "control character")
        refuses("\"unterminated", "unterminated string")
        refuses("'single'", "unexpected character")
    }

    @Test func refusesInvalidUTF8InStrings() {
        for bytes: [UInt8] in [[0x22, 0xFF, 0x22], [0x22, 0xC3, 0x22], [0x22, 0x61, 0x5C, 0x6E, 0xED, 0xA0, 0x80, 0x22]] {
            #expect(throws: JSONParseError.self) { try bytes.withUnsafeBytes { try JSON.parse($0) } }
        }
    }

    @Test func duplicateKeysAreRefusedAtEveryLevel() {
        refuses(#"{"a": 1, "a": 2}"#, "duplicate key 'a'")
        refuses(#"{"x": {"b": 1, "c": 2, "b": 3}}"#, "duplicate key 'b'")
        refuses(#"[{"k": 1, "k": 1}]"#, "duplicate key 'k'")
        // Escaped and plain spellings of the same key are the same key.
        refuses(#"{"a": 1, "\u0061": 2}"#, "duplicate key 'a'")
        #expect((try? JSON.parse(#"{"a": {"a": 1}, "b": {"a": 2}}"#)) != nil)
    }

    @Test func structuralErrors() {
        refuses("", "unexpected end")
        refuses("   ", "unexpected end")
        refuses("[1, 2", "expected ',' or ']'")
        refuses("[1,]", "unexpected character")
        refuses(#"{"a": 1,}"#, "expected a string key")
        refuses(#"{"a" 1}"#, "expected ':'")
        refuses(#"{a: 1}"#, "expected a string key")
        refuses("{} {}", "trailing characters")
        refuses("1 2", "trailing characters")
        refuses("tru", "unexpected end")
        refuses("nul", "unexpected end")
        refuses("trUe", "invalid literal")
        refuses("[1]\u{0}", "trailing characters")
    }

    @Test func nestingIsBounded() throws {
        let ok = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect((try? JSON.parse(ok)) != nil)
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        refuses(deep, "nested too deeply")
        refuses(String(repeating: #"{"a":"#, count: 1000), "nested too deeply")
    }

    @Test func writesCompactTextThatReadsBack() throws {
        let value = JSON.object([
            ("s", .string("q\"b\\n\nt\t\u{1}é")), ("i", .int(-42)), ("d", .double(0.1)), ("e", .double(1e-300)),
            ("n", .null), ("b", .bool(false)), ("a", .array([.int(1), .double(2.5)])), ("o", .object([])),
        ])
        #expect(value.text == #"{"s":"q\"b\\n\nt\t\u0001é","i":-42,"d":0.1,"e":1e-300,"n":null,"b":false,"a":[1,2.5],"o":{}}"#)
        #expect(try JSON.parse(value.text) == value)
        #expect(JSON.double(.nan).text == "null")
        #expect(JSON.double(-.infinity).text == "null")
        #expect(JSON.number(nil) == .null && JSON.number(.infinity) == .null && JSON.number(2) == .double(2))
        // Shortest text that reads back to the same double.
        for x in [0.1 + 0.2, 1.0 / 3, Double.leastNonzeroMagnitude, Double.greatestFiniteMagnitude, -2.5e-8, 1e21] {
            #expect(try JSON.parse(JSON.double(x).text).doubleValue == x)
        }
    }
}
