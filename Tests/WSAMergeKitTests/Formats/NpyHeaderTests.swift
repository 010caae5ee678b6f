import Testing
@testable import WSAMergeKit

/// The `.npy` header: magic, version, and the Python dict literal, read without evaluating it.
@Suite struct NpyHeaderTests {
    func header(_ dict: String, major: UInt8 = 1, minor: UInt8 = 0) throws -> NpyHeader {
        try NpyHeader(bytes: Bytes.npy(dict, major: major, minor: minor), file: "a.npy")
    }

    func refuses(_ dict: String, _ mentions: String..., sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let parsed = try header(dict)
            Issue.record("accepted \(dict) as \(parsed)", sourceLocation: sourceLocation)
        } catch let error as WSAMergeError {
            #expect(error.exitCode == 65, sourceLocation: sourceLocation)
            #expect(error.description.hasPrefix("a.npy: "), "\(error)", sourceLocation: sourceLocation)
            for text in mentions {
                #expect(error.description.contains(text), "'\(error)' should mention '\(text)'", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    // MARK: accepted

    @Test func readsWhatNumpyWrites() throws {
        let h = try header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }")
        #expect(h.dtype == .F32 && !h.bigEndian && !h.fortranOrder && h.shape == [2, 3] && h.dataOffset == 128)
        #expect(try header("{'descr': '<f8', 'fortran_order': True, 'shape': (4, 3, 2), }").fortranOrder)
        #expect(try header("{'descr': '<f8', 'fortran_order': False, 'shape': (), }").shape == [])
        #expect(try header("{'descr': '|b1', 'fortran_order': False, 'shape': (5,), }").shape == [5])
        #expect(try header("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }").shape == [0, 3])
        // Python 2 longs, as numpy wrote them then and still reads.
        #expect(try header("{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }").shape == [2, 3])
    }

    /// `(6)` is an integer in Python, not a tuple: numpy refuses it as a shape, and so does this.
    @Test func refusesAParenthesisedInteger() {
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (6), }", "not a tuple")
    }

    @Test func readsVersions2And3() throws {
        let v2 = try header("{'descr': '>i8', 'fortran_order': False, 'shape': (7,), }", major: 2)
        #expect(v2.dtype == .I64 && v2.bigEndian && v2.dataOffset == 128)
        let v3 = try header("{'descr': '<u2', 'fortran_order': False, 'shape': (1,), }", major: 3)
        #expect(v3.dtype == .U16 && v3.dataOffset == 128)
    }

    @Test func acceptsDoubleQuotesTrailingCommasAndAnyKeyOrder() throws {
        let h = try header(#"{"shape": (3, 4,), "fortran_order": True, "descr": "<f2",}"#)
        #expect(h.dtype == .F16 && h.fortranOrder && h.shape == [3, 4])
        #expect(try header("{ 'descr' : '<i4' , 'fortran_order' : False , 'shape' : ( 9 , ) }").shape == [9])
    }

    @Test func mapsEveryNumpyDescr() throws {
        let table: [(String, DType, Bool)] = [
            ("<f8", .F64, false), ("<f4", .F32, false), ("<f2", .F16, false), ("|b1", .BOOL, false),
            ("|u1", .U8, false), ("|i1", .I8, false), ("<i2", .I16, false), ("<u2", .U16, false),
            ("<i4", .I32, false), ("<u4", .U32, false), ("<i8", .I64, false), ("<u8", .U64, false),
            ("<c8", .C64, false), (">f8", .F64, true), (">f4", .F32, true), (">i2", .I16, true),
            (">u8", .U64, true), ("=f4", .F32, false), ("f4", .F32, false), ("u1", .U8, false),
        ]
        for (descr, dtype, big) in table {
            let parsed = try NpyHeader.parseDescr(descr, file: "a.npy")
            #expect(parsed.0 == dtype && parsed.bigEndian == big, "\(descr)")
        }
    }

    // MARK: the prefix

    @Test func refusesBadMagic() {
        expectMalformed("bad magic") { _ = try NpyHeader(bytes: Array("\u{93}NUMPX".utf8) + [1, 0, 0, 0], file: "a.npy") }
        expectMalformed("bad magic") { _ = try NpyHeader(bytes: Array("PK\u{3}\u{4}not npy".utf8), file: "a.npy") }
    }

    /// The magic and too few bytes after it is a truncated file, not a bad magic (#18 item 11).
    @Test func aTruncatedPrefixSaysTruncated() {
        expectMalformed("truncated") { _ = try NpyHeader.dataOffset(prefix: NpyHeader.magic + [1], file: "a.npy") }
        expectMalformed("truncated") { _ = try NpyHeader.dataOffset(prefix: Array(NpyHeader.magic.prefix(4)), file: "a.npy") }
    }

    @Test func refusesUnknownVersions() {
        for (major, minor) in [(0, 0), (1, 1), (2, 1), (4, 0), (255, 255)] as [(UInt8, UInt8)] {
            var bytes = Bytes.npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }")
            bytes[6] = major
            bytes[7] = minor
            expectMalformed("unsupported .npy format version \(major).\(minor)") { _ = try NpyHeader(bytes: bytes, file: "a.npy") }
        }
    }

    @Test func refusesHugeAndTruncatedHeaders() {
        expectMalformed("exceeds the limit") {
            _ = try NpyHeader.dataOffset(prefix: NpyHeader.magic + [2, 0] + Bytes.le(UInt32.max), file: "a.npy")
        }
        let full = Bytes.npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }")
        expectMalformed("truncated") { _ = try NpyHeader(bytes: Array(full.prefix(40)), file: "a.npy") }
        expectMalformed("truncated") { _ = try NpyHeader(bytes: NpyHeader.magic + [2, 0, 10, 0], file: "a.npy") }
    }

    @Test func refusesInvalidUTF8InVersion3() {
        var bytes = Bytes.npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", major: 3)
        bytes[bytes.count - 3] = 0xFF
        expectMalformed("UTF-8") { _ = try NpyHeader(bytes: bytes, file: "a.npy") }
    }

    // MARK: the dict

    @Test func refusesMissingKeys() {
        refuses("{'descr': '<f4', 'fortran_order': False, }", "missing key 'shape'")
        refuses("{'descr': '<f4', 'shape': (1,), }", "missing key 'fortran_order'")
        refuses("{'fortran_order': False, 'shape': (1,), }", "missing key 'descr'")
        refuses("{}", "missing key")
    }

    @Test func refusesExtraAndDuplicateKeys() {
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1, }", "unexpected key 'extra'")
        refuses("{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", "duplicate key 'descr'")
    }

    @Test func refusesNonBoolFortranOrder() {
        refuses("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", "fortran_order")
        refuses("{'descr': '<f4', 'fortran_order': false, 'shape': (1,), }", "fortran_order")
        refuses("{'descr': '<f4', 'fortran_order': 'False', 'shape': (1,), }", "fortran_order")
        refuses("{'descr': '<f4', 'fortran_order': None, 'shape': (1,), }", "fortran_order")
    }

    @Test func refusesMalformedShapes() {
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "non-negative")
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,), }", "shape")
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", "shape is not a tuple")
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': 3, }", "shape is not a tuple")
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", "overflows")
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2", "shape")
    }

    @Test func refusesBrokenSyntax() {
        refuses("'descr': '<f4'", "expected '{'")
        refuses("{'descr' '<f4', 'fortran_order': False, 'shape': (1,), }", "expected ':'")
        refuses("{'descr': '<f4' 'fortran_order': False, 'shape': (1,), }", "expected ',' or '}'")
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x", "unexpected text")
        refuses("{'descr': '<f4, 'fortran_order': False, 'shape': (1,), }", "malformed")
        refuses("{'descr': '<f\\x34', 'fortran_order': False, 'shape': (1,), }", "escapes")
        refuses("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), ", "malformed")
    }

    @Test func refusesObjectArraysWithoutUnpickling() {
        refuses("{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", "object arrays", "pickle")
        refuses("{'descr': '<O8', 'fortran_order': False, 'shape': (3,), }", "object arrays")
    }

    @Test func refusesStructuredDescrs() {
        refuses("{'descr': [('x', '<f4'), ('y', '<i8')], 'fortran_order': False, 'shape': (3,), }", "structured dtype")
        refuses("{'descr': [('x', '|O')], 'fortran_order': False, 'shape': (3,), }", "object fields", "pickle")
        refuses("{'descr': [('x', [('n', '|O')])], 'fortran_order': False, 'shape': (3,), }", "pickle")
        refuses("{'descr': [('x', '<f4'), 'fortran_order': False, 'shape': (3,), }", "unterminated list")
    }

    @Test func refusesStringDatetimeAndVoidDescrs() {
        refuses("{'descr': '<U5', 'fortran_order': False, 'shape': (3,), }", "string arrays")
        refuses("{'descr': '|S3', 'fortran_order': False, 'shape': (3,), }", "string arrays")
        refuses("{'descr': '|a3', 'fortran_order': False, 'shape': (3,), }", "string arrays")
        refuses("{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (3,), }", "datetime")
        refuses("{'descr': '<m8[s]', 'fortran_order': False, 'shape': (3,), }", "datetime")
        refuses("{'descr': '|V8', 'fortran_order': False, 'shape': (3,), }", "void")
    }

    @Test func refusesOtherUnsupportedDescrs() {
        for descr in ["<f16", "<c16", "<f1", "<i3", "|?", "<g", "", "<", "<x4", "float32", "<f4 "] {
            refuses("{'descr': '\(descr)', 'fortran_order': False, 'shape': (3,), }", "descr")
        }
        refuses("{'descr': '|f4', 'fortran_order': False, 'shape': (3,), }", "no byte order")
        refuses("{'descr': 5, 'fortran_order': False, 'shape': (3,), }", "not supported")
    }

    // MARK: writing

    @Test func writesHeadersNumpyReadsBack() throws {
        for (dtype, shape) in [(DType.F32, [2, 3]), (.F64, []), (.BOOL, [7]), (.I64, [0, 4]), (.U16, [1, 1, 1])] {
            let info = try TensorInfo(name: "t", dtype: dtype, shape: shape, file: "")
            let bytes = try NpyHeader.encoded(for: info, file: "out.npy")
            #expect(bytes.count % 64 == 0 && bytes.last == 0x0A)
            let back = try NpyHeader(bytes: bytes, file: "out.npy")
            #expect(back.dtype == dtype && !back.bigEndian && !back.fortranOrder && back.shape == shape && back.dataOffset == bytes.count)
        }
        for dtype in [DType.BF16, .F8_E4M3, .F8_E5M2] {
            let info = try TensorInfo(name: "t", dtype: dtype, shape: [2], file: "")
            expectMalformed("'t'", "--dtype F32") { _ = try NpyHeader.encoded(for: info, file: "out.npz") }
        }
        // A dtype wsamerge cannot decode gets no --dtype hint that could not work.
        let f4 = try TensorInfo(name: "t", dtype: .F4, shape: [2], file: "")
        expectMalformed("'t'", "--exclude") { _ = try NpyHeader.encoded(for: f4, file: "out.npz") }
    }
}
