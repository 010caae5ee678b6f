import Foundation
import Testing

/// Issue #18, found by a red-team pass: outputs a format cannot hold, sharded `--force` that
/// deleted or mixed files, stdout errors, special output files, SIGXFSZ, a transposition that
/// cost O(elements × rank), control characters on terminals, NFC/NFD names. Each pathological
/// file is small and built here.
@Suite struct HardeningTests {
    static let a = TestSupport.fixtures + "/merge/a.safetensors"
    static let b = TestSupport.fixtures + "/merge/b.safetensors"

    func files(_ dir: String) -> [String] { TestSupport.listing(dir) }

    // MARK: 1. names a format cannot hold

    @Test func namesAFormatCannotHoldAreRefusedBeforeWriting() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        from safetensors.numpy import save_file
        d = sys.argv[1]
        np.savez(d + "/meta.npz", __metadata__=np.zeros(3, np.float32), w=np.ones(2, np.float32))
        save_file({"../x": np.zeros(2, np.float32)}, d + "/dotdot.safetensors")
        save_file({"/abs": np.zeros(2, np.float32)}, d + "/abs.safetensors")
        save_file({"a\\x00b": np.zeros(2, np.float32)}, d + "/nul.safetensors")
        save_file({"n" * 65532: np.zeros(2, np.float32)}, d + "/long.safetensors")
        save_file({"a/b": np.ones(2, np.float32)}, d + "/slash.safetensors")
        """, [dir])
        let cases: [([String], String, String)] = [
            (["convert", dir + "/meta.npz", "-o", dir + "/out.safetensors"], "out.safetensors", "'__metadata__'"),
            (["convert", dir + "/meta.npz", "--max-shard-size", "4", "-o", dir + "/shards"], "shards", "'__metadata__'"),
            (["fuse", dir + "/meta.npz", dir + "/meta.npz", "-o", dir + "/fused.safetensors"], "fused.safetensors", "'__metadata__'"),
            (["convert", dir + "/dotdot.safetensors", "-o", dir + "/out.npz"], "out.npz", "'../x'"),
            (["convert", dir + "/abs.safetensors", "-o", dir + "/out.npz"], "out.npz", "'/abs'"),
            (["convert", dir + "/nul.safetensors", "-o", dir + "/out.npz"], "out.npz", "'a\\0b'"),
            (["convert", dir + "/long.safetensors", "-o", dir + "/out.npz"], "out.npz", "65532 bytes"),
        ]
        let inputs = files(dir)
        for (arguments, output, mention) in cases {
            let run = try TestSupport.wsamerge(arguments)
            TestSupport.expectRefusal(run, code: 65, mentions: [output, mention])
            #expect(files(dir) == inputs, "\(arguments) left \(files(dir))")
        }
        // A name with a '/' inside is a plain member name: written, and numpy reads it back.
        #expect(try TestSupport.wsamerge(["convert", dir + "/slash.safetensors", "-o", dir + "/slash.npz"]).status == 0)
        #expect(try TestSupport.pythonOK("print(list(np.load(sys.argv[1]).keys()))", [dir + "/slash.npz"]) == "['a/b']\n")
    }

    // MARK: 2. sharded --force

    @Test func shardedForceNeverReplacesOrRemovesAnInput() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let ck = root + "/ck"
        #expect(try TestSupport.wsamerge(["convert", Self.a, "--max-shard-size", "5kB", "-o", ck]).status == 0)
        let before = try FileManager.default.contentsOfDirectory(atPath: ck).sorted()
        #expect(before.count == 4)
        // The same names (each shard is an input), and another layout (the input's shards would be removed).
        for extra in [["--max-shard-size", "5kB"], ["--max-shard-size", "1GB"], []] {
            let run = try TestSupport.wsamerge(["convert", ck, "-o", ck + "/", "--force"] + extra)
            TestSupport.expectRefusal(run, code: 73, mentions: ["one of the inputs"])
            #expect(files(ck) == before)
        }
        #expect(try TestSupport.wsamerge(["stats", ck]).status == 0)
    }

    @Test func shardedForceRemovesOnlyWhatTheReplacedIndexLists() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let dir = root + "/model"
        #expect(try TestSupport.wsamerge(["convert", Self.a, "--max-shard-size", "5kB", "-o", dir]).status == 0)
        let mine = ["model-backup-of-v1.safetensors", "model-00009-of-00009.safetensors", "notes.txt"]
        for name in mine { try Data("mine".utf8).write(to: URL(fileURLWithPath: dir + "/" + name)) }
        let run = try TestSupport.wsamerge(["convert", Self.b, "-o", dir + "/", "--force"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(files(dir) == (mine + ["model.safetensors"]).sorted())
        for name in mine { #expect(try String(contentsOfFile: dir + "/" + name, encoding: .utf8) == "mine") }
    }

    // MARK: 7. stdout

    @Test func stdoutErrorsAreReported() throws {
        let full = try TestSupport.run("/bin/sh", ["-c", "exec '\(TestSupport.binary)' stats '\(Self.a)' > /dev/full"])
        TestSupport.expectRefusal(full, code: 74, mentions: ["<stdout>", "No space left"])
        // Help and the version too (the argument parser's own printing exited 0 regardless).
        for arguments in ["--version", "--help", "fuse --help", "help stats"] {
            let run = try TestSupport.run("/bin/sh", ["-c", "exec '\(TestSupport.binary)' \(arguments) > /dev/full"])
            TestSupport.expectRefusal(run, code: 74, mentions: ["<stdout>", "No space left"])
        }
        // A reader that went away (as `head` does): quiet, exit 0, not SIGPIPE (141).
        let closed = try TestSupport.runWithDefaultSignals(["stats", Self.a, Self.b], closedStdout: true)
        #expect(closed.status == 0, "exit \(closed.status)")
        #expect(closed.stderr.isEmpty, "\(closed.stderr)")
    }

    // MARK: 9. special output files

    @Test func specialAndDanglingOutputsAreRefusedFirst() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let fifo = dir + "/pipe.safetensors"
        #expect(mkfifo(fifo, 0o644) == 0)
        for extra in [[], ["--force"]] {
            let run = try TestSupport.wsamerge(["convert", Self.a, "-o", fifo] + extra)
            TestSupport.expectRefusal(run, code: 73, mentions: [fifo, "not a regular file"])
        }
        var info = stat()
        #expect(lstat(fifo, &info) == 0 && (info.st_mode & S_IFMT) == S_IFIFO, "the FIFO was replaced")
        let dangling = dir + "/dangling.safetensors"
        try FileManager.default.createSymbolicLink(atPath: dangling, withDestinationPath: dir + "/nowhere")
        TestSupport.expectRefusal(try TestSupport.wsamerge(["fuse", Self.a, Self.b, "-o", dangling]), code: 73,
                                  mentions: ["dangling symbolic link", "--force"])
        #expect(try TestSupport.wsamerge(["fuse", Self.a, Self.b, "-o", dangling, "--force"]).status == 0)
        #expect(TestSupport.fileExists(dangling) && !TestSupport.fileExists(dir + "/nowhere"))
        let long = dir + "/" + String(repeating: "x", count: 223)
        TestSupport.expectRefusal(try TestSupport.wsamerge(["fuse", Self.a, Self.b, "-o", long]), code: 73,
                                  mentions: ["223 bytes", "temporary"])
        #expect(files(dir) == ["dangling.safetensors", "pipe.safetensors"])
    }

    // MARK: 3. Fortran order, many unit dimensions

    @Test func fortranOrderWithManyUnitDimensionsIsLinear() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        d = sys.argv[1]
        a = np.asfortranarray((np.arange(1 << 20) % 251).astype(np.uint8).reshape((1,) * 30 + (1024,) + (1,) * 30 + (1024,)))
        np.save(d + "/f.npy", a)
        np.save(d + "/c.npy", np.ascontiguousarray(a))
        # 65 dimensions: more than numpy itself allows; the header is written by hand.
        from numpy.lib import format as npformat
        import io
        buf = io.BytesIO()
        npformat.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (1,) * 65})
        open(d + "/rank65.npy", "wb").write(buf.getvalue() + b"\\x00")
        """, [dir])
        let start = Date()
        let run = try TestSupport.wsamerge(["convert", dir + "/f.npy", "-o", dir + "/out.npy"])
        let seconds = Date().timeIntervalSince(start)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(seconds < 2, "took \(seconds) s")
        #expect(TestSupport.read(dir + "/out.npy")?.suffix(1 << 20) == TestSupport.read(dir + "/c.npy")?.suffix(1 << 20))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["inspect", dir + "/rank65.npy"]), code: 65, mentions: ["65 dimensions", "at most 64"])
    }

    // MARK: 8. control characters

    @Test func controlCharactersInNamesAreEscapedOnTerminals() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let path = dir + "/ctrl.safetensors"
        try TestSupport.pythonOK("""
        from safetensors.numpy import save_file
        save_file({"a\\x00b": np.zeros(2, np.float32), "c\\nwsamerge: error: forged": np.ones(2, np.float32),
                   "d\\x1b[2Jred": np.ones(1, np.float32), "e": np.ones(1, np.float32)}, sys.argv[1])
        save_file({"x\\nwsamerge: error: forged\\x1b[2J": np.ones(2, ml_dtypes.bfloat16)}, sys.argv[2])
        """, [path, dir + "/bf16.safetensors"])
        for command in ["inspect", "stats"] {
            let run = try TestSupport.wsamerge([command, "--format", "table", path])
            #expect(run.status == 0)
            let lines = run.stdout.split(separator: "\n")
            #expect(lines.count == 6, "\(run.stdout)")  // title, header, 4 rows
            #expect(run.stdout.contains("a\\0b") && run.stdout.contains("c\\nwsamerge") && run.stdout.contains("d\\x1b[2Jred"))
            #expect(!run.stdout.utf8.contains(0) && !run.stdout.utf8.contains(0x1B))
        }
        let refused = try TestSupport.wsamerge(["convert", dir + "/bf16.safetensors", "-o", dir + "/out.npz"])
        TestSupport.expectRefusal(refused, code: 65, mentions: ["x\\nwsamerge: error: forged\\x1b[2J", "BF16"])
        #expect(!refused.stderr.utf8.contains(0x1B))
    }

    // MARK: 10. names compare byte-wise

    @Test func nfcAndNfdNamesAreDifferentTensors() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        import unicodedata
        from safetensors.numpy import save_file
        d = sys.argv[1]
        nfc = unicodedata.normalize("NFC", "caf\\u00e9"); nfd = unicodedata.normalize("NFD", nfc)
        save_file({nfc: np.zeros(2, np.float32), nfd: np.ones(2, np.float32)}, d + "/both.safetensors")
        save_file({nfc: np.zeros(2, np.float32)}, d + "/nfc.safetensors")
        save_file({nfd: np.zeros(2, np.float32)}, d + "/nfd.safetensors")
        """, [dir])
        let inspect = try TestSupport.wsamerge(["inspect", dir + "/both.safetensors"])
        #expect(inspect.status == 0, "\(inspect.stderr)")
        #expect(((try? inspect.json()) as? [String: Any])?["tensor_count"] as? Int == 2)
        for layout in ["out.safetensors", "out.npz"] {
            #expect(try TestSupport.wsamerge(["convert", dir + "/both.safetensors", "-o", dir + "/" + layout]).status == 0)
        }
        let wsa = try TestSupport.wsamerge(["fuse", "--strategy", "wsa", "--wsa-min-rank", "1", dir + "/both.safetensors",
                                            dir + "/both.safetensors", "-o", dir + "/wsa.safetensors"])
        #expect(wsa.status == 0, "\(wsa.stderr)")
        let fused = try TestSupport.wsamerge(["fuse", dir + "/nfc.safetensors", dir + "/nfd.safetensors", "-o", dir + "/x.safetensors"])
        TestSupport.expectRefusal(fused, code: 65, mentions: ["share no tensor name"])
    }
}
