import Foundation
import Testing

/// Issue #18, item 11: messages a new user tripped on, each tried as that user would.
@Suite struct MessageTests {
    static let a = TestSupport.fixtures + "/merge/a.safetensors"
    static let b = TestSupport.fixtures + "/merge/b.safetensors"

    /// Command-line mistakes, each one line naming what is wrong: `--include=` with nothing after
    /// '=' (the argument parser took the next argument as its value: a merge of the other model
    /// alone), a negative number given space-separated (was "Missing value"), and a value
    /// outside a long list of choices (the list was cut off after its first line).
    @Test func commandLineMistakesAreOneClearLine() throws {
        let a = TestSupport.fixture("merge/a.safetensors"), b = TestSupport.fixture("merge/b.safetensors")
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let empty = try TestSupport.wsamerge(["fuse", "--include=", a, b, "-o", dir + "/m.safetensors"])
        TestSupport.expectRefusal(empty, code: 64, mentions: ["--include has an empty value"])
        // A value that itself ends in '=' is a value.
        let equals = try TestSupport.wsamerge(["fuse", a, b, "--metadata=note=", "-o", dir + "/m.safetensors"])
        #expect(equals.status == 0, "\(equals.stderr)")
        TestSupport.remove(dir + "/m.safetensors")
        #expect(!TestSupport.fileExists(dir + "/m.safetensors"))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", "--jobs", "-1", a]), code: 64, mentions: ["--jobs must be at least 1"])
        let strategy = try TestSupport.wsamerge(["fuse", "--strategy", "bogus", a, b, "-o", dir + "/m.safetensors"])
        TestSupport.expectRefusal(strategy, code: 64, mentions: ["'bogus'", "average, fisher, wsa", "ramplus_tl"])
        #expect(!strategy.stderr.contains("Help:"))
        // After "--", an argument ending in '=' is a file name, not an option.
        let named = try TestSupport.wsamerge(["inspect", "--", "--weird="])
        TestSupport.expectRefusal(named, code: 66, mentions: ["--weird="])
        // `help` of a command that does not exist (it printed the overview and exited 0).
        TestSupport.expectRefusal(try TestSupport.wsamerge(["help", "merge"]), code: 64, mentions: ["no command 'merge'", "fuse"])
        let help = try TestSupport.wsamerge(["help", "fuse"])
        #expect(help.status == 0 && help.stdout.contains("--strategy"))
    }

    /// What would be silently lost or wrong is refused: a parameter given twice (a flag and a
    /// --param, or --param repeated), a --metadata key of the provenance, a target scope that
    /// lists a tensor twice, a non-UTF-8 argument (it named another file), and an output whose
    /// parent is a file.
    @Test func ambiguousOrLossyRequestsAreRefused() throws {
        let a = TestSupport.fixture("merge/a.safetensors"), b = TestSupport.fixture("merge/b.safetensors")
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/m.safetensors"
        for (options, words) in [(["--weights", "1,1", "--param", "weight=3,4"], ["--weights and --param weight=… both set parameter 'weight'"]),
                                 (["--param", "weight=1,1", "--param", "weight=3,4"], ["both set parameter 'weight'"]),
                                 (["--metadata", "wsamerge.strategy=x"], ["'wsamerge.strategy'", "provenance"])] {
            TestSupport.expectRefusal(try TestSupport.wsamerge(["fuse", a, b, "-o", out] + options), code: 64, mentions: words)
        }
        let target = dir + "/target.json"
        try #"{"tensors":[{"name":"model.embed.weight","fused":{"mean":0,"std":1}},{"name":"model.embed.weight","fused":{"mean":1,"std":2}}]}"#
            .write(toFile: target, atomically: true, encoding: .utf8)
        let twice = try TestSupport.wsamerge(["fuse", "--strategy", "wsa", "--target-scope", target, a, b, "-o", out])
        TestSupport.expectRefusal(twice, code: 65, mentions: ["model.embed.weight", "listed twice"])
        // A Latin-1 file name, passed as raw bytes through the shell.
        let latin1 = try TestSupport.run("/bin/bash", ["-c", "\"$0\" convert \"$1\" -o \"$2\"/$'caf\\xe9.safetensors'", TestSupport.binary, a, dir])
        TestSupport.expectRefusal(latin1, code: 64, mentions: ["argument 4 is not UTF-8 text"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("caf") }.isEmpty)
        TestSupport.expectRefusal(try TestSupport.wsamerge(["convert", a, "-o", a + "/x.safetensors"]), code: 73, mentions: ["is not a directory"])
        #expect(!TestSupport.fileExists(out))
    }

    /// `-o -` (the shell's standard output) is refused for every output, not written as a file
    /// called '-'; `./-` still names one.
    @Test func dashAsAnOutputIsRefused() throws {
        let a = TestSupport.fixture("merge/a.safetensors"), b = TestSupport.fixture("merge/b.safetensors")
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        for arguments in [["fuse", a, b, "-o", "-"], ["fuse", a, b, "--max-shard-size", "1MB", "-o", "-"], ["convert", a, "-o", "-"],
                          ["scope", a, b, "-o", "-"], ["scope", a, b, "--plot", "-"]] {
            let result = try TestSupport.run(TestSupport.binary, arguments, directory: dir)
            TestSupport.expectRefusal(result, code: 64, mentions: ["'-' as an output", "./-"])
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
        let named = try TestSupport.run(TestSupport.binary, ["convert", a, "-o", "./-"], directory: dir)
        #expect(named.status == 0 && TestSupport.fileExists(dir + "/-"))
    }

    @Test func truncatedDuplicateAndEmptyNumPyFilesSayWhatTheyAre() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        import io, warnings, zipfile
        d = sys.argv[1]
        b = io.BytesIO(); np.save(b, np.zeros(2)); data = b.getvalue()
        open(d + "/trunc.npy", "wb").write(data[:8])
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(d + "/dup.npz", "w") as z:
            z.writestr("w.npy", data); z.writestr("w.npy", data)
        np.savez(d + "/empty.npz")
        """, [dir])
        let truncated = try TestSupport.wsamerge(["inspect", dir + "/trunc.npy"])
        TestSupport.expectRefusal(truncated, code: 65, mentions: ["truncated"])
        #expect(!truncated.stderr.contains("magic"))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["inspect", dir + "/dup.npz"]), code: 65,
                                  mentions: ["two members of the same name"])
        let empty = try TestSupport.wsamerge(["convert", dir + "/empty.npz", "-o", dir + "/e.safetensors"])
        TestSupport.expectRefusal(empty, code: 65, mentions: ["holds no tensors"])
        #expect(!empty.stderr.contains("--include"))
    }

    @Test func scopeListsAShapeMismatchUnderSkipped() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
        from safetensors.numpy import save_file
        save_file({"w": np.ones((2, 3), np.float32), "v": np.arange(4, dtype=np.float32)}, sys.argv[1])
        save_file({"w": np.ones((3, 2), np.float32), "v": np.arange(4, dtype=np.float32) * 2}, sys.argv[2])
        """, [dir + "/x.safetensors", dir + "/y.safetensors"])
        let run = try TestSupport.wsamerge(["scope", dir + "/x.safetensors", dir + "/y.safetensors"])
        #expect(run.status == 0, "\(run.stderr)")
        let json = try #require(try run.json() as? [String: Any])
        #expect((json["tensors"] as? [[String: Any]])?.map { $0["name"] as? String } == ["v"])
        let skipped = try #require(json["skipped"] as? [[String: Any]])
        #expect(skipped.count == 1 && skipped[0]["name"] as? String == "w")
        let reason = skipped[0]["reason"] as? String ?? ""
        #expect(reason.contains("[3, 2]") && reason.contains("[2, 3]"), "\(reason)")
    }

    @Test func inspectIsAllOrNothing() throws {
        let run = try TestSupport.wsamerge(["inspect", Self.a, "/nonexistent.safetensors"])
        TestSupport.expectRefusal(run, code: 66, mentions: ["/nonexistent.safetensors"])
        #expect(run.stdout.isEmpty, "printed before failing: \(run.stdout.prefix(80))")
    }

    @Test func shardLinksOutOfTheIndexDirectoryAreRefused() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let ck = root + "/ck"
        #expect(try TestSupport.wsamerge(["convert", Self.a, "--max-shard-size", "5kB", "-o", ck]).status == 0)
        let shard = ck + "/model-00002-of-00003.safetensors"
        // The link's target: a secret whose first bytes must not appear in any message.
        let secret = root + "/secret"
        try Data("SECRET-PASSWORD-1234".utf8).write(to: URL(fileURLWithPath: secret))
        try FileManager.default.moveItem(atPath: shard, toPath: root + "/moved.safetensors")
        try FileManager.default.createSymbolicLink(atPath: shard, withDestinationPath: secret)
        let run = try TestSupport.wsamerge(["stats", ck])
        TestSupport.expectRefusal(run, code: 65, mentions: ["model-00002-of-00003.safetensors", "symbolic link out"])
        #expect(!run.stderr.contains("SECRET") && !run.stderr.contains("4849"), "\(run.stderr)")
        // A link to a real shard elsewhere is refused the same; one inside the directory is read.
        try FileManager.default.removeItem(atPath: shard)
        try FileManager.default.createSymbolicLink(atPath: shard, withDestinationPath: root + "/moved.safetensors")
        TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", ck]), code: 65, mentions: ["symbolic link out"])
        try FileManager.default.removeItem(atPath: shard)
        try FileManager.default.moveItem(atPath: root + "/moved.safetensors", toPath: ck + "/real.bin")
        try FileManager.default.createSymbolicLink(atPath: shard, withDestinationPath: "real.bin")
        #expect(try TestSupport.wsamerge(["stats", ck]).status == 0)
        // The Hugging Face cache: snapshots/REV/NAME → ../../blobs/HASH.
        let fresh = root + "/fresh"
        #expect(try TestSupport.wsamerge(["convert", Self.a, "--max-shard-size", "5kB", "-o", fresh]).status == 0)
        let repo = root + "/models--org--name"
        try FileManager.default.createDirectory(atPath: repo + "/blobs", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: repo + "/snapshots/abc", withIntermediateDirectories: true)
        for (i, name) in TestSupport.listing(fresh).enumerated() {
            try FileManager.default.moveItem(atPath: fresh + "/" + name, toPath: repo + "/blobs/hash\(i)")
            try FileManager.default.createSymbolicLink(atPath: repo + "/snapshots/abc/" + name, withDestinationPath: "../../blobs/hash\(i)")
        }
        let cached = try TestSupport.wsamerge(["stats", repo + "/snapshots/abc"])
        #expect(cached.status == 0, "\(cached.stderr)")
    }

    @Test func aDirectoryWithATrailingSlashGivesCleanPaths() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        #expect(try TestSupport.wsamerge(["convert", Self.a, "-o", root + "/base/"]).status == 0)
        let run = try TestSupport.wsamerge(["inspect", root + "/base/"])
        #expect(((try? run.json()) as? [String: Any])?["file"] as? String == root + "/base/model.safetensors")
    }
}
