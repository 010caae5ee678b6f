import Foundation
import Testing

/// Hostile inputs built to exhaust memory or time (zip bombs, headers claiming terabytes, many
/// tensors sharing one region): each is refused with exit 65 and one stderr line, within a
/// second, without a large allocation.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct HostileInputTests {
    /// Runs `wsamerge stats path` under `/usr/bin/time`, returning the result, seconds and peak RSS in MB.
    func measured(_ path: String) throws -> (TestSupport.Result, Double, Double) {
        let rssFile = path + ".rss"
        let start = Date()
        let result = try TestSupport.run("/usr/bin/time", ["-f", "%M", "-o", rssFile, TestSupport.binary, "stats", path])
        let seconds = Date().timeIntervalSince(start)
        let rss = (try? String(contentsOfFile: rssFile, encoding: .utf8)).flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        return (result, seconds, rss / 1024)
    }

    @Test func bombsAndGiantClaimsAreRefusedQuickly() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/time") else {
            Issue.record("/usr/bin/time is needed to measure memory (apt-get install time)")
            return
        }
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        import io, struct, zipfile, zlib
        from numpy.lib import format as npformat
        d = sys.argv[1]
        def header(shape, descr="<f8"):
            buf = io.BytesIO()
            npformat.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
            return buf.getvalue()
        def bomb(path, declared_shape, lie_about_size):
            # One deflated member: a small .npy header followed by 1 GiB of zeros (about 1 MB compressed).
            # After a full flush the compressor starts afresh, so every further 16 MiB of zeros
            # deflates to the same bytes: one such block is made and repeated.
            head = header(declared_shape)
            comp = zlib.compressobj(9, zlib.DEFLATED, -15)
            zeros = bytes(1 << 24)
            first = comp.compress(head) + comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
            block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
            data = first + block * 63 + comp.flush()
            crc = zlib.crc32(head)
            for _ in range(64):
                crc = zlib.crc32(zeros, crc)
            size = len(head) + (64 << 24)
            if lie_about_size:
                size = len(head) + 8 * int(np.prod(declared_shape))
            name = b"w.npy"
            local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(name), 0) + name
            central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size, len(name), 0, 0, 0, 0, 0, 0) + name
            end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
            open(path, "wb").write(local + data + central + end)
        bomb(os.path.join(d, "bomb.npz"), (10,), False)
        bomb(os.path.join(d, "lying_bomb.npz"), (10,), True)
        # A member whose header claims 8 TB of float64.
        with zipfile.ZipFile(os.path.join(d, "terabytes.npz"), "w") as z:
            z.writestr("w.npy", header((1 << 40,)) + bytes(64))
        open(os.path.join(d, "terabytes.npy"), "wb").write(header((1 << 40,)) + bytes(64))
        # An object array inside an archive (numpy pickles it).
        np.savez(os.path.join(d, "object.npz"), ok=np.zeros(3), obj=np.array([1, "a", None], dtype=object))
        # Garbage, a zero-length header, ten tensors sharing one region, a safetensors shape of terabytes.
        open(os.path.join(d, "garbage.npz"), "wb").write(np.random.default_rng(0).bytes(4096))
        open(os.path.join(d, "zero_header.safetensors"), "wb").write(struct.pack("<Q", 0))
        h = json.dumps({f"t{i}": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} for i in range(10)}).encode()
        open(os.path.join(d, "shared_region.safetensors"), "wb").write(struct.pack("<Q", len(h)) + h + bytes(8))
        h = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}).encode()
        open(os.path.join(d, "terabytes.safetensors"), "wb").write(struct.pack("<Q", len(h)) + h + bytes(8))
        """, [dir])
        let cases: [(String, [String])] = [
            ("bomb.npz", ["'w'", "declares"]),
            ("lying_bomb.npz", ["w.npy"]),
            ("terabytes.npz", ["'w'", "declares"]),
            ("terabytes.npy", ["truncated"]),
            ("object.npz", ["object arrays"]),
            ("garbage.npz", ["garbage.npz"]),
            ("zero_header.safetensors", ["empty"]),
            ("shared_region.safetensors", ["overlaps"]),
            ("terabytes.safetensors", ["truncated"]),
        ]
        for (name, mentions) in cases {
            let (result, seconds, rss) = try measured(dir + "/" + name)
            TestSupport.expectRefusal(result, code: 65, mentions: mentions)
            #expect(seconds < 1.0, "\(name) took \(seconds) s")
            #expect(rss < 200, "\(name) peaked at \(rss) MB")
        }
    }

    /// The hostile files of issue #18, kept tiny in `fuzz/regressions/` (`fuzz/make_regressions.py`),
    /// where the fuzzers replay them too: each is read or refused as expected, quickly and in
    /// bounded memory.
    @Test func issue18FilesAreHandledQuickly() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/time") else {
            Issue.record("/usr/bin/time is needed to measure memory (apt-get install time)")
            return
        }
        let regressions = TestSupport.root + "/fuzz/regressions/"
        let cases: [(String, Int32, [String])] = [
            ("NpyHeaderFuzz/truncated.npy", 65, ["truncated"]),
            ("NpyHeaderFuzz/rank65.npy", 65, ["65 dimensions"]),
            ("NpyHeaderFuzz/fortran-unit-dims.npy", 0, []),
            ("NpzReaderFuzz/metadata-member.npz", 0, []),
            ("NpzReaderFuzz/duplicate-members.npz", 65, ["two members of the same name"]),
            ("NpzReaderFuzz/traversal-names.npz", 0, []),
            ("NpzReaderFuzz/empty.npz", 0, []),
            ("NpzReaderFuzz/fortran-unit-dims.npz", 0, []),
            ("NpzReaderFuzz/rank65.npz", 65, ["65 dimensions"]),
            ("NpzReaderFuzz/nfc-nfd.npz", 0, []),
            ("SafetensorsHeaderFuzz/control-names.safetensors", 0, []),
            ("SafetensorsHeaderFuzz/nfc-nfd.safetensors", 0, []),
            ("SafetensorsHeaderFuzz/many-numbers.safetensors", 65, ["2000 dimensions"]),
            ("SafetensorsHeaderFuzz/rank65.safetensors", 65, ["65 dimensions"]),
            ("SafetensorsHeaderFuzz/zero-size.safetensors", 0, []),
            ("SafetensorsHeaderFuzz/metadata-twice.safetensors", 65, ["duplicate key '__metadata__'"]),
        ]
        for (name, code, mentions) in cases {
            let path = regressions + name
            #expect(TestSupport.fileExists(path), "\(name) is missing: run python3 fuzz/make_regressions.py")
            let dir = try TestSupport.temporaryDirectory()
            defer { TestSupport.remove(dir) }
            let copy = dir + "/" + (name.split(separator: "/").last.map(String.init) ?? name)
            try FileManager.default.copyItem(atPath: path, toPath: copy)
            let (result, seconds, rss) = try measured(copy)
            if code == 0 {
                #expect(result.status == 0, "\(name): \(result.stderr)")
                #expect((try? result.json()) != nil, "\(name): stdout is not one JSON document")
            } else {
                TestSupport.expectRefusal(result, code: code, mentions: mentions)
            }
            #expect(seconds < 1.0, "\(name) took \(seconds) s")
            #expect(rss < 200, "\(name) peaked at \(rss) MB")
        }
    }
}
