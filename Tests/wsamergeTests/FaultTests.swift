import Foundation
import Testing

/// Faults around the files: kills, full disks, odd paths. Whatever happens, nothing is left at
/// `-o` and no temporary file stays behind.
@Suite(.serialized, .enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct FaultTests {
    /// Three ~24 MB F32 checkpoints, big enough that a merge takes a moment.
    static let large: [String] = {
        let dir = NSTemporaryDirectory() + "wsamerge-fault-inputs"
        let paths = (0..<3).map { "\(dir)/m\($0).safetensors" }
        if !paths.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) {
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            _ = try? TestSupport.python("""
                import sys, numpy as np
                from safetensors.numpy import save_file
                for i, p in enumerate(sys.argv[1:]):
                    r = np.random.default_rng(i)
                    save_file({f"layers.{l}.weight": r.standard_normal((1024, 1536), dtype=np.float32) for l in range(4)}, p)
                """, paths)
        }
        return paths
    }()

    /// Entries of `dir` other than the inputs.
    func leftovers(_ dir: String, except: Set<String> = []) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir).filter { !except.contains($0) }.sorted()
    }

    /// Starts `arguments`, held by the test hook at `pause` (by default right after its first
    /// output tensor; the hook holds it until the marker file goes, at most the pause's seconds);
    /// once it is held, runs `during`, then kills it (or, with `kill` false, lets it go on) and
    /// waits for it to end. With `stderr`, the process's standard error is collected there.
    @discardableResult
    func runPaused(_ arguments: [String], pause: String = "write:60", kill killing: Bool = true,
                   stderr: UnsafeMutablePointer<String>? = nil, during: () throws -> Void = {}) throws -> Process {
        let mark = NSTemporaryDirectory() + "wsamerge-pause-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: mark) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestSupport.binary)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["WSAMERGE_TEST_PAUSE": pause,
                                                                          "WSAMERGE_TEST_PAUSE_MARK": mark]) { $1 }
        let err = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = stderr == nil ? FileHandle.nullDevice : err
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: mark) && process.isRunning && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(FileManager.default.fileExists(atPath: mark), "the run never reached the pause \(pause)")
        try during()
        if killing { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: mark)  // lets a held run go on
        if let stderr { stderr.pointee = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self) }
        process.waitUntilExit()
        return process
    }

    /// `runPaused`, killed in the pause.
    func killMidWrite(_ arguments: [String], pause: String = "write:60") throws -> Process {
        try runPaused(arguments, pause: pause)
    }

    /// The names and bytes of every file in `dir`.
    func snapshot(_ dir: String) throws -> [String: Data] {
        var files: [String: Data] = [:]
        for name in try leftovers(dir) { files[name] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name)) }
        return files
    }

    @Test func killDuringFuseLeavesNothing() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/merged.safetensors"
        let process = try killMidWrite(["fuse", "--strategy", "wsa"] + Self.large + ["-o", out])
        #expect(process.terminationReason == .uncaughtSignal)
        #expect(!TestSupport.fileExists(out))
        let left = try leftovers(dir)
        #expect(left.isEmpty, "the kill left \(left)")
        // Also when replacing an existing output with --force: the old file stays intact.
        try Data("old".utf8).write(to: URL(fileURLWithPath: out))
        _ = try killMidWrite(["fuse"] + Self.large + ["-o", out, "--force"])
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "old")
        #expect(try leftovers(dir) == ["merged.safetensors"])
    }

    @Test func killDuringConvertLeavesNothing() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        for output in ["converted.npz", "shards/"] {
            let process = try killMidWrite(["convert", Self.large[0], "--compress", "-o", dir + "/" + output]
                                           .filter { output.hasSuffix("npz") || $0 != "--compress" }
                                           + (output.hasSuffix("/") ? ["--max-shard-size", "10MB"] : []))
            #expect(process.terminationReason == .uncaughtSignal)
        }
        #expect(!TestSupport.fileExists(dir + "/converted.npz"))
        // The shard directory may exist, empty: no shard or index appears before the end.
        let shards = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/shards")) ?? []
        #expect(shards.isEmpty, "\(shards)")
    }

    /// A model directory appears as a whole: its config, tokenizer, recipe and card are synced
    /// with the weights and linked in with them, so a run killed while syncing the files beside
    /// the weights leaves neither (not weights without a config).
    @Test(arguments: [1, 3])
    func killWhileSyncingModelFilesLeavesNothing(syncs: Int) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let source = dir + "/source"
        try FileManager.default.createDirectory(atPath: source + "/1_Pooling", withIntermediateDirectories: true)
        for name in ["config.json", "tokenizer.json", "1_Pooling/config.json"] {
            try "{}".write(toFile: source + "/" + name, atomically: true, encoding: .utf8)
        }
        let out = dir + "/merged"
        // Sync 0 is the weights'; the ones after it the files beside them.
        let process = try killMidWrite(["fuse"] + Self.large + ["--copy-files-from", source, "-o", out + "/"], pause: "sync:60:\(syncs)")
        #expect(process.terminationReason == .uncaughtSignal)
        let left = (FileManager.default.enumerator(atPath: out)?.allObjects as? [String] ?? []).filter { !$0.hasSuffix("1_Pooling") }
        #expect(left.isEmpty, "the kill left \(left)")
        // Let go instead, the run writes them all.
        let run = try runPaused(["fuse"] + Self.large + ["--copy-files-from", source, "-o", out + "/"], pause: "sync:60:\(syncs)", kill: false)
        #expect(run.terminationStatus == 0)
        #expect(try leftovers(out) == ["1_Pooling", "README.md", "config.json", "model.safetensors", "tokenizer.json", "wsamerge_recipe.yml"])
    }

    /// A sentence-transformers module's weights (`2_Dense/model.safetensors`) are linked in with
    /// the directory's own: a run killed while syncing them leaves neither.
    @Test func killWhileSyncingModuleWeightsLeavesNothing() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        var models: [String] = []
        for k in 0..<2 {
            let model = dir + "/st\(k)"
            let made = try TestSupport.python("""
                import os, sys, numpy as np; from safetensors.numpy import save_file
                d = sys.argv[1]; os.makedirs(d + "/2_Dense")
                save_file({"w": np.full((64, 64), float(sys.argv[2]), np.float32)}, d + "/model.safetensors")
                save_file({"linear.weight": np.full((3, 4), float(sys.argv[2]), np.float32)}, d + "/2_Dense/model.safetensors")
                open(d + "/modules.json", "w").write('[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}, {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]')
                """, [model, "\(k + 1)"])
            #expect(made.status == 0, "\(made.stderr)")
            models.append(model)
        }
        let out = dir + "/merged"
        // Sync 0 is the directory's weights, 1 the module's.
        let process = try killMidWrite(["fuse"] + models + ["-o", out + "/"], pause: "sync:60:1")
        #expect(process.terminationReason == .uncaughtSignal)
        let left = (FileManager.default.enumerator(atPath: out)?.allObjects as? [String] ?? []).filter { $0 != "2_Dense" }
        #expect(left.isEmpty, "the kill left \(left)")
    }

    /// A sharded output appears as a whole: every shard is synced before the first is linked in,
    /// so a run killed after syncing its second shard leaves the earlier checkpoint as it was.
    @Test func killWhileSyncingShardsKeepsTheOldSet() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let shards = dir + "/shards"
        let first = try TestSupport.wsamerge(["convert", Self.large[0], "--max-shard-size", "10MB", "-o", shards])
        #expect(first.status == 0, "\(first.stderr)")
        let old = try snapshot(shards)
        #expect(old.count > 2 && old.keys.contains("model.safetensors.index.json"))
        let process = try killMidWrite(["convert", Self.large[0], "--dtype", "F16", "--max-shard-size", "10MB", "--force", "-o", shards],
                                       pause: "sync:60:1")
        #expect(process.terminationReason == .uncaughtSignal)
        let now = try snapshot(shards)
        #expect(now.keys.sorted() == old.keys.sorted())
        #expect(now == old, "a shard of the killed run was linked in")
    }

    /// A file of the set that cannot be linked in (here a directory took the index's name while
    /// the run synced) fails the run with nothing of it left: with --force the shards it had
    /// already replaced come back; in a new directory the shards linked before are removed.
    @Test func aFileThatCannotBeLinkedUndoesTheOthers() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        // An earlier F16 set: two shards and an index, the names the new run writes.
        let shards = dir + "/shards"
        let args = ["--dtype", "F16", "--max-shard-size", "10MB"]
        #expect(try TestSupport.wsamerge(["convert", Self.large[1]] + args + ["-o", shards]).status == 0)
        let old = try snapshot(shards)
        #expect(old.keys.sorted() == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"])
        let index = shards + "/model.safetensors.index.json", aside = dir + "/index.json"
        // Held after its last sync (the index's): the index's name becomes a directory.
        let forced = try runPaused(["convert", Self.large[0]] + args + ["--force", "-o", shards], pause: "sync:60:2", kill: false) {
            try FileManager.default.moveItem(atPath: index, toPath: aside)
            try FileManager.default.createDirectory(atPath: index, withIntermediateDirectories: false)
        }
        #expect(forced.terminationStatus == 73)
        try FileManager.default.removeItem(atPath: index)
        try FileManager.default.moveItem(atPath: aside, toPath: index)
        #expect(try snapshot(shards) == old, "the failed run did not put the earlier shards back")

        let fresh = dir + "/fresh"
        let blocked = fresh + "/model.safetensors.index.json"
        let run = try runPaused(["convert", Self.large[0]] + args + ["-o", fresh], pause: "sync:60:2", kill: false) {
            try Data("mine".utf8).write(to: URL(fileURLWithPath: blocked))
        }
        #expect(run.terminationStatus == 73)
        #expect(try leftovers(fresh) == ["model.safetensors.index.json"])
        #expect(try String(contentsOfFile: blocked, encoding: .utf8) == "mine")
    }

    /// Non-negative Fisher files for `large`.
    static let largeFisher: [String] = {
        let paths = large.map { $0.replacingOccurrences(of: "/m", with: "/f") }
        if !paths.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) {
            _ = try? TestSupport.python("""
                import sys, numpy as np
                from safetensors.numpy import load_file, save_file
                n = len(sys.argv) // 2
                for src, dst in zip(sys.argv[1:1 + n], sys.argv[1 + n:]):
                    save_file({k: np.abs(v) for k, v in load_file(src).items()}, dst)
                """, large + paths)
        }
        return paths
    }()

    /// `stats` (whole tensors side by side) and a Fisher merge (six inputs, read by two threads).
    @Test(arguments: ["stats", "fisher"])
    func inputTruncatedWhileReadIsAnIOError(command: String) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let input = dir + "/shrinking.safetensors"
        try FileManager.default.copyItem(atPath: Self.large[0], toPath: input)
        // The test hook holds wsamerge after the header is read; the file shrinks meanwhile.
        let arguments = command == "stats" ? ["stats", input]
            : ["fuse", "--strategy", "fisher", input] + Self.large.dropFirst() + Self.largeFisher.flatMap { ["--fisher", $0] } + ["-o", dir + "/out.safetensors"]
        var message = ""
        let process = try runPaused(arguments, pause: "open:60", kill: false, stderr: &message) {
            #expect(truncate(input, 1 << 20) == 0)
        }
        #expect(process.terminationReason == .exit, "the truncation killed the process")
        #expect(process.terminationStatus == 74, "\(message)")
        #expect(message.hasPrefix("wsamerge: error: \(input): "), "\(message)")
        #expect(message.contains("truncated while reading"), "\(message)")
    }

    @Test func fileSizeLimitIsAnIOError() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/merged.safetensors"
        // 1024 blocks of 1 KiB, SIGXFSZ ignored so the write fails with EFBIG instead.
        let command = "ulimit -f 1024; trap '' XFSZ; exec '\(TestSupport.binary)' fuse \(Self.large.map { "'\($0)'" }.joined(separator: " ")) -o '\(out)'"
        let run = try TestSupport.run("/bin/sh", ["-c", command])
        TestSupport.expectRefusal(run, code: 74, mentions: [out, "write failed"])
        #expect(!TestSupport.fileExists(out))
        #expect(try leftovers(dir).isEmpty)
    }

    /// An output that fits a file-size limit is written, even when the limit is not a whole
    /// number of device blocks (the direct-I/O tail is not padded past the end).
    @Test func outputJustUnderTheFileSizeLimit() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/merged.safetensors"
        func fuse(_ pad: Int, limitKiB: Int? = nil) throws -> TestSupport.Result {
            let args = ["fuse"] + Self.large + ["--metadata", "pad=" + String(repeating: "x", count: pad), "-o", out, "--force"]
            let quoted = args.map { "'\($0)'" }.joined(separator: " ")
            let limit = limitKiB.map { "ulimit -f \($0); " } ?? ""
            return try TestSupport.run("/bin/bash", ["-c", "\(limit)trap '' XFSZ; exec '\(TestSupport.binary)' \(quoted)"])
        }
        #expect(try fuse(0).status == 0)
        var size = try #require(TestSupport.fileSize(out))
        // Header padding keeps lengths a multiple of 8: move the length to 1000 past a 4 KiB
        // boundary, where a padded last block would overshoot a limit rounded up to 1 KiB. The
        // pad appears twice in the header (the pair, and the recorded recipe), so measure.
        var pad = 0
        for _ in 0..<8 where !(size % 4096 >= 1000 && size % 4096 < 1008) {
            pad += max(1, ((1000 - size % 4096 + 4096) % 4096) / 2)
            #expect(try fuse(pad).status == 0)
            size = try #require(TestSupport.fileSize(out))
        }
        let run = try fuse(pad, limitKiB: (size + 1023) / 1024)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(TestSupport.fileSize(out) == size)
        #expect(size % 4096 >= 1000 && size % 4096 < 1008)
    }

    @Test func oddInputPathsAreRefusedCleanly() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let fifo = dir + "/pipe.safetensors"
        #expect(mkfifo(fifo, 0o644) == 0)
        try FileManager.default.createSymbolicLink(atPath: dir + "/dangling.safetensors", withDestinationPath: dir + "/nowhere")
        try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: false)
        let cases: [(String, Int32, String)] = [
            (fifo, 66, "not a regular file"),
            (dir + "/dangling.safetensors", 66, "dangling"),
            (dir + "/empty", 66, "holds none of"),
            (dir + "/absent.safetensors", 66, "no such file"),
        ]
        for (path, code, text) in cases {
            for command in ["inspect", "stats"] {
                TestSupport.expectRefusal(try TestSupport.wsamerge([command, path]), code: code, mentions: [path, text])
            }
        }
    }

    @Test func outputInMissingDirectoryIsRefused() throws {
        let out = "/nonexistent-\(UUID().uuidString)/m.safetensors"
        let run = try TestSupport.wsamerge(["convert", TestSupport.fixtures + "/merge/a.safetensors", "-o", out])
        TestSupport.expectRefusal(run, code: 73, mentions: ["does not exist"])
    }
}
