import Testing
@testable import WSAMergeKit

/// The safetensors header rules: those of the reference reader, plus duplicate names refused.
/// One test per refusal class; each checks the error names what is wrong.
@Suite struct SafetensorsHeaderTests {
    /// Parses `json` as a header followed by `buffer` data bytes.
    @discardableResult
    func parse(_ json: String, buffer: Int) throws -> SafetensorsHeader {
        var bytes = Array(json.utf8)
        return try bytes.withUnsafeMutableBytes { try SafetensorsHeader(json: UnsafeRawBufferPointer($0), bufferSize: buffer, file: "m.safetensors") }
    }

    func refuses(_ json: String, buffer: Int, _ mentions: String..., sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try parse(json, buffer: buffer)
            Issue.record("accepted \(json)", sourceLocation: sourceLocation)
        } catch let error as WSAMergeError {
            #expect(error.exitCode == 65, sourceLocation: sourceLocation)
            #expect(error.description.hasPrefix("m.safetensors: "), "\(error)", sourceLocation: sourceLocation)
            for text in mentions {
                #expect(error.description.contains(text), "'\(error)' should mention '\(text)'", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    func entry(_ dtype: String = "F32", _ shape: String = "[2]", _ offsets: String = "[0, 8]") -> String {
        #"{"dtype": "\#(dtype)", "shape": \#(shape), "data_offsets": \#(offsets)}"#
    }

    // MARK: accepted

    @Test func acceptsAValidHeaderInStorageOrder() throws {
        let header = try parse(#"{"__metadata__": {"format": "pt", "k": ""}, "b": \#(entry("BF16", "[2, 3]", "[8, 20]")), "a": \#(entry()), "s": \#(entry("F64", "[]", "[20, 28]")), "z": \#(entry("I8", "[0, 4]", "[28, 28]"))}"#, buffer: 28)
        #expect(header.metadata == ["format": "pt", "k": ""])
        #expect(header.entries.map(\.info.name) == ["a", "b", "s", "z"])
        #expect(header.entries.map(\.begin) == [0, 8, 20, 28])
        #expect(header.entries[1].info == (try TensorInfo(name: "b", dtype: .BF16, shape: [2, 3], file: "")))
        #expect(header.entries[2].info.elementCount == 1)
        #expect(header.entries[3].info.byteCount == 0)
    }

    @Test func zeroSizeTensorsKeepHeaderOrderAtTheSameOffset() throws {
        let header = try parse(#"{"e2": \#(entry("F32", "[0]", "[0, 0]")), "x": \#(entry("U8", "[1]", "[0, 1]")), "e1": \#(entry("F16", "[3, 0]", "[0, 0]"))}"#, buffer: 1)
        #expect(header.entries.map(\.info.name) == ["e2", "e1", "x"])
    }

    @Test func acceptsLeadingAndTrailingWhitespace() throws {
        // The reference writer pads the header with spaces; other writers add newlines.
        for json in ["  {\"a\": \(entry())}", "{\"a\": \(entry())}        ", "\n\t{\"a\": \(entry())}\r\n "] {
            #expect(try parse(json, buffer: 8).entries.count == 1)
        }
    }

    @Test func acceptsEmptyHeadersAndNullMetadata() throws {
        #expect(try parse("{}", buffer: 0).entries.isEmpty)
        #expect(try parse(#"{"__metadata__": null}"#, buffer: 0).metadata.isEmpty)
        #expect(try parse(#"{"__metadata__": {}}"#, buffer: 0).metadata.isEmpty)
    }

    @Test func everyDtypeCodeIsRecognised() throws {
        for dtype in DType.allCases {
            let bytes = dtype.byteCount(elements: 8)!
            let header = try parse(#"{"t": \#(entry(dtype.rawValue, "[8]", "[0, " + String(bytes) + "]"))}"#, buffer: bytes)
            #expect(header.entries[0].info.dtype == dtype)
        }
    }

    // MARK: the length prefix

    @Test func refusesFilesTooSmallForTheLength() {
        for size in 0..<8 {
            expectMalformed("too small") { _ = try SafetensorsHeader.headerLength(prefix: Array(repeating: 0, count: size), fileSize: size, file: "f") }
        }
    }

    @Test func refusesHeaderLengthsOverTheLimit() throws {
        for n in [UInt64(100_000_001), UInt64(Int.max), UInt64.max] {
            expectMalformed("exceeds the limit") { _ = try SafetensorsHeader.headerLength(prefix: Bytes.le(n), fileSize: 1 << 40, file: "f") }
        }
        #expect(try SafetensorsHeader.headerLength(prefix: Bytes.le(UInt64(100_000_000)), fileSize: 100_000_008, file: "f") == 100_000_000)
    }

    @Test func refusesHeaderLengthsPastTheEnd() throws {
        expectMalformed("past the end") { _ = try SafetensorsHeader.headerLength(prefix: Bytes.le(UInt64(100)), fileSize: 107, file: "f") }
        #expect(try SafetensorsHeader.headerLength(prefix: Bytes.le(UInt64(99)), fileSize: 107, file: "f") == 99)
    }

    // MARK: the JSON

    @Test func refusesAnEmptyHeader() { refuses("", buffer: 0, "empty") }

    @Test func refusesInvalidUTF8() throws {
        var bytes = Array(#"{"__metadata__": {"k": "v"#.utf8) + [0xC3, 0x28] + Array(#""}}"#.utf8)
        expectMalformed("UTF-8") {
            _ = try bytes.withUnsafeMutableBytes { try SafetensorsHeader(json: UnsafeRawBufferPointer($0), bufferSize: 0, file: "f") }
        }
    }

    @Test func refusesTextThatIsNotJSON() {
        refuses("{\"a\": ", buffer: 0, "not valid JSON")
        refuses("hello", buffer: 0, "not valid JSON")
        refuses("{'a': 1}", buffer: 0, "not valid JSON")
    }

    @Test func refusesJSONThatIsNotAnObject() {
        for json in ["[]", "[1, 2]", "\"x\"", "42", "null", "true"] {
            refuses(json, buffer: 0, "not a JSON object")
        }
    }

    @Test func refusesTrailingNULPadding() {
        // The reference reader's JSON parser refuses NUL after the object: so does wsamerge.
        refuses("{\"a\": \(entry())}\u{0}\u{0}\u{0}", buffer: 8, "not valid JSON", "trailing")
    }

    @Test func refusesDuplicateTensorNames() {
        refuses(#"{"a": \#(entry()), "a": \#(entry("F32", "[2]", "[8, 16]"))}"#, buffer: 16, "duplicate key 'a'")
    }

    @Test func refusesNonStringMetadata() {
        refuses(#"{"__metadata__": {"k": 1}}"#, buffer: 0, "'k'", "not a string")
        refuses(#"{"__metadata__": {"k": null}}"#, buffer: 0, "not a string")
        refuses(#"{"__metadata__": {"k": {"x": "y"}}}"#, buffer: 0, "not a string")
        refuses(#"{"__metadata__": ["k", "v"]}"#, buffer: 0, "__metadata__")
        refuses(#"{"__metadata__": "format=pt"}"#, buffer: 0, "__metadata__")
    }

    // MARK: tensor entries

    @Test func refusesEntriesThatAreNotObjects() {
        refuses(#"{"a": [0, 8]}"#, buffer: 8, "'a'", "not a JSON object")
    }

    @Test func refusesUnknownAndLowercaseDtypes() {
        refuses(#"{"a": \#(entry("f32"))}"#, buffer: 8, "'a'", "unknown dtype 'f32'")
        refuses(#"{"a": \#(entry("F128"))}"#, buffer: 8, "unknown dtype 'F128'")
        refuses(#"{"a": \#(entry("float32"))}"#, buffer: 8, "unknown dtype")
        refuses(#"{"a": \#(entry(" F32"))}"#, buffer: 8, "unknown dtype")
        refuses(#"{"a": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}"#, buffer: 8, "dtype is not a string")
    }

    @Test func refusesMissingFields() {
        refuses(#"{"a": {"shape": [2], "data_offsets": [0, 8]}}"#, buffer: 8, "'a'", "no dtype")
        refuses(#"{"a": {"dtype": "F32", "data_offsets": [0, 8]}}"#, buffer: 8, "'a'", "no shape")
        refuses(#"{"a": {"dtype": "F32", "shape": [2]}}"#, buffer: 8, "'a'", "no data_offsets")
    }

    @Test func refusesDataOffsetsWithoutExactlyTwoEntries() {
        refuses(#"{"a": \#(entry("F32", "[2]", "[8]"))}"#, buffer: 8, "'a'", "data_offsets has 1 numbers, expected 2")
        refuses(#"{"a": \#(entry("F32", "[2]", "[0, 8, 8]"))}"#, buffer: 8, "data_offsets has 3 numbers")
        refuses(#"{"a": \#(entry("F32", "[2]", "[]"))}"#, buffer: 8, "data_offsets has 0 numbers")
        refuses(#"{"a": \#(entry("F32", "[2]", "{\"begin\": 0}"))}"#, buffer: 8, "data_offsets is not an array")
    }

    @Test func refusesNegativeFloatAndNonNumericDimensions() {
        refuses(#"{"a": \#(entry("F32", "[-2]", "[0, 8]"))}"#, buffer: 8, "'a'", "non-negative integers")
        refuses(#"{"a": \#(entry("F32", "[2.0]", "[0, 8]"))}"#, buffer: 8, "non-negative integers")
        refuses(#"{"a": \#(entry("F32", "[1.5]", "[0, 8]"))}"#, buffer: 8, "non-negative integers")
        refuses(#"{"a": \#(entry("F32", "[2e0]", "[0, 8]"))}"#, buffer: 8, "non-negative integers")
        refuses(#"{"a": \#(entry("F32", "[\"2\"]", "[0, 8]"))}"#, buffer: 8, "non-negative integers")
        refuses(#"{"a": \#(entry("F32", "[null]", "[0, 8]"))}"#, buffer: 8, "non-negative integers")
        refuses(#"{"a": \#(entry("F32", "2", "[0, 8]"))}"#, buffer: 8, "shape is not an array")
        refuses(#"{"a": \#(entry("F32", "[2]", "[-8, 0]"))}"#, buffer: 8, "non-negative integers")
        refuses(#"{"a": \#(entry("F32", "[2]", "[0.0, 8]"))}"#, buffer: 8, "non-negative integers")
    }

    @Test func refusesSizeMismatches() {
        refuses(#"{"a": \#(entry("F32", "[3]", "[0, 8]"))}"#, buffer: 8, "'a'", "span 8 bytes", "needs 12")
        refuses(#"{"a": \#(entry("F32", "[]", "[0, 8]"))}"#, buffer: 8, "needs 4")
        refuses(#"{"a": \#(entry("F32", "[2]", "[8, 0]"))}"#, buffer: 8, "before begin")
        refuses(#"{"a": \#(entry("F4", "[3]", "[0, 2]"))}"#, buffer: 2, "whole number of bytes")
    }

    @Test func refusesShapesWhoseSizeOverflows() {
        // 2^32 × 2^32 = 2^64 elements: the product overflows.
        refuses(#"{"a": \#(entry("F32", "[4294967296, 4294967296]", "[0, 8]"))}"#, buffer: 8, "'a'", "overflows")
        // 2^62 elements fit an Int, 2^64 bytes do not.
        refuses(#"{"a": \#(entry("F32", "[4611686018427387904]", "[0, 8]"))}"#, buffer: 8, "overflows")
        // A dimension that does not even fit a signed 64-bit integer.
        refuses(#"{"a": \#(entry("U8", "[18446744073709551616]", "[0, 8]"))}"#, buffer: 8, "overflows")
        refuses(#"{"a": \#(entry("U8", "[8]", "[0, 18446744073709551615]"))}"#, buffer: 8, "overflows")
        // A zero dimension makes any other dimension harmless.
        #expect((try? parse(#"{"a": \#(entry("F32", "[0, 4294967296, 4294967296]", "[0, 0]"))}"#, buffer: 0)) != nil)
    }

    @Test func refusesOverlappingTensors() {
        refuses(#"{"a": \#(entry("F32", "[2]", "[0, 8]")), "b": \#(entry("F32", "[2]", "[4, 12]"))}"#, buffer: 12, "'b'", "overlaps")
        refuses(#"{"a": \#(entry("F32", "[2]", "[0, 8]")), "b": \#(entry("F32", "[2]", "[0, 8]"))}"#, buffer: 8, "overlaps")
    }

    @Test func refusesHoles() {
        refuses(#"{"a": \#(entry("F32", "[1]", "[0, 4]")), "b": \#(entry("F32", "[1]", "[8, 12]"))}"#, buffer: 12, "'b'", "hole")
        refuses(#"{"a": \#(entry("F32", "[1]", "[4, 8]"))}"#, buffer: 8, "'a'", "hole")
    }

    @Test func refusesTrailingBytesAfterTheLastTensor() {
        refuses(#"{"a": \#(entry())}"#, buffer: 9, "1 trailing bytes")
        refuses("{}", buffer: 3, "3 trailing bytes")
    }

    @Test func refusesTruncatedData() {
        refuses(#"{"a": \#(entry())}"#, buffer: 7, "truncated")
        refuses(#"{"a": \#(entry()), "b": \#(entry("F32", "[2]", "[8, 16]"))}"#, buffer: 8, "truncated")
    }

    // MARK: whole files

    @Test func readsAWholeFileAndRefusesItsTruncation() throws {
        let good = Bytes.safetensors(#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                                     data: Bytes.le(Float(1.5)) + Bytes.le(Float(-2)))
        let path = try Bytes.temporaryFile(good, name: "m.safetensors")
        defer { Bytes.removeDirectory(of: path) }
        let checkpoint = try CheckpointReader.open(path)
        #expect(checkpoint.format == .safetensors && checkpoint.metadata == ["format": "pt"])
        #expect(try checkpoint.reader(for: 0).readAll() == Bytes.le(Float(1.5)) + Bytes.le(Float(-2)))

        let cut = try Bytes.temporaryFile(Array(good.dropLast()), name: "cut.safetensors")
        defer { Bytes.removeDirectory(of: cut) }
        expectMalformed("cut.safetensors", "truncated") { _ = try CheckpointReader.open(cut) }

        let tiny = try Bytes.temporaryFile([1, 2, 3], name: "tiny.safetensors")
        defer { Bytes.removeDirectory(of: tiny) }
        expectMalformed("tiny.safetensors", "too small") { _ = try CheckpointReader.open(tiny) }
    }
}
