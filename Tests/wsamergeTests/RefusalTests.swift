import Foundation
import Testing

/// Hostile and broken inputs, end to end: each refusal class exits 65 (66 for what is missing)
/// with exactly one stderr line `wsamerge: error: <file>: …`, and a failed convert leaves
/// nothing at `-o` (nor any temporary) behind.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct RefusalTests {
    struct Case: CustomStringConvertible, Sendable {
        let name: String
        let bytes: [UInt8]
        var code: Int32 = 65
        let mentions: [String]
        var description: String { name }
    }

    static func le(_ n: UInt64) -> [UInt8] { withUnsafeBytes(of: n.littleEndian, Array.init) }

    /// A safetensors file: length, header text, then `data` (8 bytes of zeros by default).
    static func st(_ header: String, data: [UInt8] = [UInt8](repeating: 0, count: 8)) -> [UInt8] {
        le(UInt64(header.utf8.count)) + Array(header.utf8) + data
    }

    static func entry(_ dtype: String = "F32", _ shape: String = "[2]", _ offsets: String = "[0,8]") -> String {
        #"{"dtype":"\#(dtype)","shape":\#(shape),"data_offsets":\#(offsets)}"#
    }

    static func npy(_ dict: String, data: [UInt8], version: UInt8 = 1) -> [UInt8] {
        var text = Array(dict.utf8)
        while (10 + text.count + 1) % 64 != 0 { text.append(0x20) }
        text.append(0x0A)
        return [0x93] + Array("NUMPY".utf8) + [version, 0, UInt8(text.count & 0xFF), UInt8(text.count >> 8)] + text + data
    }

    static let cases: [Case] = [
        Case(name: "empty file", bytes: [], mentions: ["too small"]),
        Case(name: "too small", bytes: [1, 2, 3], mentions: ["too small"]),
        Case(name: "header length over the limit", bytes: le(200_000_000) + Array("{}".utf8), mentions: ["exceeds the limit"]),
        Case(name: "header length 2^64-1", bytes: le(.max) + Array("{}".utf8), mentions: ["exceeds the limit"]),
        Case(name: "header past the end", bytes: le(1000) + Array("{}".utf8), mentions: ["past the end"]),
        Case(name: "header not UTF-8", bytes: le(14) + Array(#"{"__metadata__"#.utf8.prefix(12)) + [0xFF, 0x7D], mentions: ["UTF-8"]),
        Case(name: "header not JSON", bytes: st(#"{"w": "#), mentions: ["not valid JSON"]),
        Case(name: "header not an object", bytes: st("[1, 2]"), mentions: ["not a JSON object"]),
        Case(name: "unknown dtype", bytes: st(#"{"w":\#(entry("F128"))}"#), mentions: ["'w'", "unknown dtype 'F128'"]),
        Case(name: "lowercase dtype", bytes: st(#"{"w":\#(entry("f32"))}"#), mentions: ["'w'", "unknown dtype 'f32'"]),
        Case(name: "one data offset", bytes: st(#"{"w":\#(entry("F32", "[2]", "[8]"))}"#), mentions: ["'w'", "data_offsets"]),
        Case(name: "three data offsets", bytes: st(#"{"w":\#(entry("F32", "[2]", "[0,8,8]"))}"#), mentions: ["'w'", "data_offsets"]),
        Case(name: "negative dimension", bytes: st(#"{"w":\#(entry("F32", "[-2]"))}"#), mentions: ["'w'", "non-negative"]),
        Case(name: "float dimension", bytes: st(#"{"w":\#(entry("F32", "[2.0]"))}"#), mentions: ["'w'", "non-negative integers"]),
        Case(name: "size mismatch", bytes: st(#"{"w":\#(entry("F32", "[3]"))}"#), mentions: ["'w'", "needs 12"]),
        Case(name: "overlapping tensors", bytes: st(#"{"a":\#(entry("F32", "[2]", "[0,8]")),"b":\#(entry("F32", "[1]", "[4,8]"))}"#),
             mentions: ["'b'", "overlaps"]),
        Case(name: "hole between tensors", bytes: st(#"{"a":\#(entry("F32", "[1]", "[0,4]")),"b":\#(entry("F32", "[1]", "[8,12]"))}"#, data: Array(repeating: 0, count: 12)),
             mentions: ["'b'", "hole"]),
        Case(name: "trailing bytes", bytes: st(#"{"w":\#(entry())}"#, data: Array(repeating: 0, count: 9)), mentions: ["trailing bytes"]),
        Case(name: "truncated data", bytes: st(#"{"w":\#(entry())}"#, data: Array(repeating: 0, count: 5)), mentions: ["truncated"]),
        Case(name: "shape overflowing 2^64", bytes: st(#"{"w":\#(entry("F32", "[4294967296,4294967296]"))}"#), mentions: ["'w'", "overflows"]),
        Case(name: "huge data offsets", bytes: st(#"{"w":\#(entry("U8", "[8]", "[0,18446744073709551615]"))}"#), mentions: ["'w'", "overflows"]),
        Case(name: "non-string metadata", bytes: st(#"{"__metadata__":{"epoch":3},"w":\#(entry())}"#), mentions: ["'epoch'", "not a string"]),
        Case(name: "duplicate tensor names", bytes: st(#"{"w":\#(entry()),"w":\#(entry("F32", "[2]", "[8,16]"))}"#, data: Array(repeating: 0, count: 16)),
             mentions: ["duplicate", "'w'"]),
        Case(name: "trailing NUL padding", bytes: st(#"{"w":\#(entry())}"# + "\u{0}\u{0}\u{0}\u{0}"), mentions: ["not valid JSON"]),
        Case(name: "git-lfs pointer", bytes: Array("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n".utf8),
             mentions: ["git-lfs", "git lfs pull"]),
        Case(name: "npy version 9", bytes: npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", data: Array(repeating: 0, count: 8), version: 9),
             mentions: ["version 9.0"]),
        Case(name: "npy non-bool fortran_order", bytes: npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", data: Array(repeating: 0, count: 8)),
             mentions: ["fortran_order"]),
        Case(name: "npy truncated data", bytes: npy("{'descr': '<f8', 'fortran_order': False, 'shape': (100,), }", data: Array(repeating: 0, count: 10)),
             mentions: ["truncated", "800"]),
        Case(name: "npy truncated header", bytes: Array(npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", data: []).prefix(30)),
             mentions: ["truncated"]),
    ]

    /// Runs `stats`, `inspect` (for header problems) and `convert` on `path`; every one refuses
    /// with `code`, and the convert leaves its output directory empty.
    func expectRefused(_ path: String, code: Int32, mentions: [String], dataError: Bool = false,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let stats = try TestSupport.wsamerge(["stats", path])
        TestSupport.expectRefusal(stats, code: code, mentions: [path] + mentions, sourceLocation: sourceLocation)
        #expect(stats.stdout.isEmpty, sourceLocation: sourceLocation)
        #expect(stats.stderr.hasPrefix("wsamerge: error: " + path), "\(stats.stderr)", sourceLocation: sourceLocation)
        if !dataError {
            TestSupport.expectRefusal(try TestSupport.wsamerge(["inspect", path]), code: code, mentions: mentions, sourceLocation: sourceLocation)
        }
        let out = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(out) }
        for target in ["m.safetensors", "m.npz", "shards/"] {
            let convert = try TestSupport.wsamerge(["convert", path, "--dtype", "F32", "-o", out + "/" + target])
            TestSupport.expectRefusal(convert, code: code, mentions: mentions, sourceLocation: sourceLocation)
            #expect(TestSupport.listing(out).filter { $0 != "shards" }.isEmpty, "left behind: \(TestSupport.listing(out))", sourceLocation: sourceLocation)
            #expect(TestSupport.listing(out + "/shards").isEmpty, sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: cases)
    func hostileFileIsRefused(_ refusal: Case) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let path = dir + "/input.bin"
        try TestSupport.write(refusal.bytes, to: path)
        try expectRefused(path, code: refusal.code, mentions: refusal.mentions)
    }

    @Test func numpyFilesThatNeedPickleOrAreNotNumbersAreRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        import zipfile
        d = sys.argv[1]
        np.save(os.path.join(d, "object.npy"), np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        np.save(os.path.join(d, "structured.npy"), np.zeros(3, dtype=[("x", "<f4"), ("y", "<i8")]))
        np.save(os.path.join(d, "unicode.npy"), np.array(["a", "bc"]))
        np.save(os.path.join(d, "bytes.npy"), np.array([b"a", b"bc"]))
        np.save(os.path.join(d, "datetime.npy"), np.array(["2024-01-01"], dtype="datetime64[D]"))
        np.save(os.path.join(d, "void.npy"), np.zeros(2, dtype="V4"))
        np.save(os.path.join(d, "float128.npy"), np.zeros(2, dtype=np.longdouble))
        np.savez(os.path.join(d, "object.npz"), w=np.arange(3.0), obj=np.array([1, "x"], dtype=object))
        """, [dir])
        let expectations: [(String, [String])] = [
            ("object.npy", ["object arrays", "pickle"]), ("structured.npy", ["structured"]),
            ("unicode.npy", ["string arrays"]), ("bytes.npy", ["string arrays"]), ("datetime.npy", ["datetime"]),
            ("void.npy", ["void"]), ("float128.npy", ["unsupported descr"]), ("object.npz", ["obj.npy", "pickle"]),
        ]
        for (name, mentions) in expectations {
            try expectRefused(dir + "/" + name, code: 65, mentions: mentions)
        }
    }

    @Test func brokenArchivesAreRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        import io, zipfile
        from numpy.lib import format as npformat
        d = sys.argv[1]
        def member(array, extra=b"", cut=0):
            buf = io.BytesIO()
            npformat.write_array(buf, array)
            data = buf.getvalue() + extra
            return data[:len(data) - cut]
        def archive(name, members, method=zipfile.ZIP_STORED):
            with zipfile.ZipFile(os.path.join(d, name), "w", compression=method) as z:
                for k, v in members.items():
                    z.writestr(k, v)
        a, b = np.arange(1000, dtype=np.float32), np.arange(2000, dtype=np.float64)
        archive("not_npy.npz", {"a.npy": member(a), "README.txt": b"hello"})
        archive("short_member.npz", {"a.npy": member(a), "b.npy": member(b, cut=8)})
        archive("long_member.npz", {"a.npy": member(a), "b.npy": member(b, extra=b"12345678")})
        archive("duplicate.npz", {"a.npy": member(a), "b.npy": member(b)})
        blob = bytearray(open(os.path.join(d, "duplicate.npz"), "rb").read())
        blob = blob.replace(b"b.npy", b"a.npy")
        open(os.path.join(d, "duplicate.npz"), "wb").write(bytes(blob))
        # Corrupt tensor data: a stored member with a flipped byte (bad CRC-32), a deflated one
        # with a damaged stream; both are only found while the data streams.
        np.savez(os.path.join(d, "bad_crc.npz"), a=a, b=b)
        blob = bytearray(open(os.path.join(d, "bad_crc.npz"), "rb").read())
        at = blob.find(b.tobytes()[800:816])
        blob[at] ^= 0xFF
        open(os.path.join(d, "bad_crc.npz"), "wb").write(bytes(blob))
        rng = np.random.default_rng(0)
        np.savez_compressed(os.path.join(d, "bad_deflate.npz"), a=a, b=rng.standard_normal(5000))
        blob = bytearray(open(os.path.join(d, "bad_deflate.npz"), "rb").read())
        for i in range(len(blob) // 2, len(blob) // 2 + 64):
            blob[i] ^= 0x5A
        open(os.path.join(d, "bad_deflate.npz"), "wb").write(bytes(blob))
        np.savez(os.path.join(d, "cut.npz"), a=a, b=b)
        blob = open(os.path.join(d, "cut.npz"), "rb").read()
        open(os.path.join(d, "cut.npz"), "wb").write(blob[: len(blob) // 2])
        """, [dir])
        try expectRefused(dir + "/not_npy.npz", code: 65, mentions: ["README.txt", "not a .npy"])
        try expectRefused(dir + "/short_member.npz", code: 65, mentions: ["'b'", "declares"])
        try expectRefused(dir + "/long_member.npz", code: 65, mentions: ["'b'", "declares"])
        try expectRefused(dir + "/duplicate.npz", code: 65, mentions: [])
        try expectRefused(dir + "/bad_crc.npz", code: 65, mentions: ["b.npy"], dataError: true)
        try expectRefused(dir + "/bad_deflate.npz", code: 65, mentions: ["b.npy"], dataError: true)
        try expectRefused(dir + "/cut.npz", code: 65, mentions: ["zip"])
        // numpy agrees that the corrupt ones are corrupt.
        let numpy = try TestSupport.python(TestSupport.pythonPrelude + """
        for name in ["bad_crc.npz", "bad_deflate.npz"]:
            try:
                with np.load(os.path.join(sys.argv[1], name)) as z:
                    [z[k] for k in z.files]
                print(name, "accepted")
            except Exception:
                print(name, "refused")
        """, [dir])
        #expect(numpy.stdout == "bad_crc.npz refused\nbad_deflate.npz refused\n")
    }

    @Test func brokenShardedCheckpointsAreRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let shard = Self.st(#"{"a":\#(Self.entry())}"#)
        func index(_ map: String) -> [UInt8] { Array(#"{"metadata": {"total_size": 8}, "weight_map": \#(map)}"#.utf8) }
        func make(_ name: String, index text: [UInt8], shards: [String: [UInt8]] = ["s1.safetensors": shard],
                  indexName: String = "model.safetensors.index.json") throws -> String {
            let folder = dir + "/" + name
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            try TestSupport.write(text, to: folder + "/" + indexName)
            for (file, bytes) in shards { try TestSupport.write(bytes, to: folder + "/" + file) }
            return folder + "/" + indexName
        }
        let good = try make("good", index: index(#"{"a": "s1.safetensors"}"#))
        #expect(try TestSupport.wsamerge(["stats", good]).status == 0)

        let missing = try make("missing", index: index(#"{"a": "s1.safetensors", "b": "s2.safetensors"}"#))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", missing]), code: 66, mentions: ["s2.safetensors", "no such file"])
        let escaping = try make("escaping", index: index(#"{"a": "../good/s1.safetensors"}"#))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", escaping]), code: 65, mentions: [escaping, "'a'", "leaves"])
        let absolute = try make("absolute", index: index(#"{"a": "/etc/passwd"}"#))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", absolute]), code: 65, mentions: ["leaves"])
        let noMap = try make("nomap", index: Array(#"{"metadata": {}}"#.utf8))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", noMap]), code: 65, mentions: [noMap, "weight_map"])
        let notJSON = try make("notjson", index: Array(#"{"weight_map": {"a": "s1.safetensors",}}"#.utf8))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", notJSON]), code: 65, mentions: [notJSON, "not valid JSON"])
        let dupKey = try make("dupkey", index: index(#"{"a": "s1.safetensors", "a": "s1.safetensors"}"#))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", dupKey]), code: 65, mentions: ["duplicate"])
        let absent = try make("absent", index: index(#"{"a": "s1.safetensors", "zz": "s1.safetensors"}"#))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", absent]), code: 65, mentions: ["'zz'", "missing from its shard"])
        let unlisted = try make("unlisted", index: index(#"{"b": "s2.safetensors"}"#),
                                shards: ["s1.safetensors": shard, "s2.safetensors": Self.st(#"{"b":\#(Self.entry()),"c":\#(Self.entry("F32", "[2]", "[8,16]"))}"#, data: Array(repeating: 0, count: 16))])
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", unlisted]), code: 65, mentions: ["'c'", "not listed"])
        let twice = try make("twice", index: index(#"{"a": "s1.safetensors"}"#),
                             shards: ["s1.safetensors": shard, "s2.safetensors": shard], indexName: "first.safetensors.index.json")
        try TestSupport.write(index(#"{"a": "s2.safetensors"}"#), to: dir + "/twice/other.safetensors.index.json")
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", dir + "/twice"]), code: 65, mentions: ["several index files"])
        #expect(try TestSupport.wsamerge(["stats", twice]).status == 0)
        // A variant beside the plain index (Hugging Face's model.fp16…): the plain one is read.
        _ = try make("variant", index: index(#"{"a": "s1.safetensors"}"#), shards: ["s1.safetensors": shard, "s2.safetensors": [1, 2, 3]])
        try TestSupport.write(index(#"{"a": "s2.safetensors"}"#), to: dir + "/variant/model.fp16.safetensors.index.json")
        #expect(try TestSupport.wsamerge(["stats", dir + "/variant"]).status == 0)
        let badShard = try make("badshard", index: index(#"{"a": "s1.safetensors"}"#), shards: ["s1.safetensors": [1, 2, 3]])
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", badShard]), code: 65, mentions: ["s1.safetensors", "too small"])
    }

    @Test func missingInputsExit66() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        for command in [["stats"], ["inspect"], ["convert", "-o", dir + "/out.safetensors"]] {
            let missing = try TestSupport.wsamerge(command + [dir + "/nope.safetensors"])
            TestSupport.expectRefusal(missing, code: 66, mentions: [dir + "/nope.safetensors", "no such file"])
            let emptyDir = try TestSupport.wsamerge(command + [dir])
            TestSupport.expectRefusal(emptyDir, code: 66, mentions: [dir])
            let noParent = try TestSupport.wsamerge(command + [dir + "/no/such/dir/m.safetensors"])
            TestSupport.expectRefusal(noParent, code: 66)
        }
        #expect(TestSupport.listing(dir).isEmpty)
        // With several inputs, the first missing one is named and nothing is printed for it.
        let mixed = try TestSupport.wsamerge(["inspect", TestSupport.fixture("basic.safetensors"), dir + "/nope.npz"])
        #expect(mixed.status == 66 && mixed.stderr == "wsamerge: error: \(dir)/nope.npz: no such file\n")
    }

    @Test func usageErrorsExit64() throws {
        let basic = TestSupport.fixture("basic.safetensors")
        for arguments in [["frobnicate"], ["stats"], ["stats", "--format", "xml", basic], ["stats", "--jobs", "0", basic],
                          ["stats", "--include", "(", basic], ["stats", "--exclude", "[", basic], ["stats", "--group-by", "block", basic],
                          ["convert", basic], ["convert", basic, "-o", "x.safetensors", "--compress"],
                          ["convert", basic, "-o", "x.npz", "--max-shard-size", "1GB"], ["convert", basic, "-o", "x", "--max-shard-size", "0"],
                          ["convert", basic, "-o", ""], ["fuse", basic, basic, "-o", ""], ["convert", basic, "-o", "x.bin"],
                          ["fuse", basic, basic, "-o", "merged.pt"]] {
            let result = try TestSupport.wsamerge(arguments)
            TestSupport.expectRefusal(result, code: 64)
            #expect(result.stdout.isEmpty, "\(arguments)")
        }
        #expect(!TestSupport.fileExists("x.safetensors") && !TestSupport.fileExists("x.npz") && !TestSupport.fileExists("x")
                && !TestSupport.fileExists("x.bin") && !TestSupport.fileExists("merged.pt"))
    }
}
