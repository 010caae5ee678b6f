import Foundation
import Testing

/// Issue #18, items 2, 5 and 6: signals, file-size limits and concurrent runs leave no
/// temporaries, no directory a run created and no mixed shard sets.
extension TestSupport {
    /// Runs wsamerge through Python with every signal unblocked and at its default action (as
    /// from a shell), optionally under a file-size limit (bytes) and with stdout a pipe whose
    /// reader is gone. The result's status is 128 + N when signal N ended it.
    static func runWithDefaultSignals(_ arguments: [String], fileSizeLimit: Int? = nil, closedStdout: Bool = false) throws -> Result {
        try python("""
            import os, resource, signal, subprocess, sys
            limit, closed = int(sys.argv[1]), sys.argv[2] == "1"
            def child():
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
                    signal.signal(s, signal.SIG_DFL)
                if limit >= 0:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            stdout = subprocess.PIPE
            if closed:
                r, w = os.pipe(); os.close(r); stdout = w
            p = subprocess.run(sys.argv[3:], preexec_fn=child, stdout=stdout, stderr=subprocess.PIPE)
            sys.stderr.buffer.write(p.stderr)
            sys.exit(128 - p.returncode if p.returncode < 0 else p.returncode)
            """, [String(fileSizeLimit ?? -1), closedStdout ? "1" : "0", binary] + arguments)
    }
}

extension FaultTests {
    static let noTmpfile = ["WSAMERGE_TEST_NO_TMPFILE": "1"]

    /// `runPaused` with extra environment: starts `arguments`, waits for the pause, sends
    /// `signal`, lets it go on and waits.
    func signalled(_ arguments: [String], signal: Int32, pause: String = "write:60",
                   environment: [String: String] = [:]) throws -> Process {
        let mark = NSTemporaryDirectory() + "wsamerge-pause-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: mark) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestSupport.binary)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(
            ["WSAMERGE_TEST_PAUSE": pause, "WSAMERGE_TEST_PAUSE_MARK": mark].merging(environment) { $1 }) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: mark) && process.isRunning && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(FileManager.default.fileExists(atPath: mark), "the run never reached the pause \(pause)")
        kill(process.processIdentifier, signal)
        process.waitUntilExit()
        return process
    }

    @Test(arguments: [SIGINT, SIGTERM], [false, true])
    func interruptedRunLeavesNothing(signal: Int32, namedTemporaries: Bool) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let environment = namedTemporaries ? Self.noTmpfile : [:]
        for output in ["new-shards", "one.safetensors"] {
            let process = try signalled(["convert", Self.large[0], "-o", dir + "/" + output]
                                        + (output.hasSuffix("shards") ? ["--max-shard-size", "10MB"] : []),
                                        signal: signal, environment: environment)
            #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == signal,
                    "\(process.terminationReason) \(process.terminationStatus)")
            let left = try leftovers(dir)
            #expect(left.isEmpty, "\(output): \(left)")
        }
    }

    /// A kill -9 leaves a named temporary (no O_TMPFILE) or the hidden link of a `--force`
    /// commit; the next run to the same output removes them.
    @Test func theNextRunRemovesWhatAKilledRunLeft() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/out.safetensors"
        _ = try signalled(["convert", Self.large[0], "-o", out], signal: SIGKILL, environment: Self.noTmpfile)
        var left = try leftovers(dir)
        #expect(left.count == 1 && left[0].hasPrefix(".out.safetensors.wsamerge-") && left[0].hasSuffix(".tmp"), "\(left)")
        #expect(try TestSupport.wsamerge(["convert", Self.large[1], "-o", out]).status == 0)
        #expect(try leftovers(dir) == ["out.safetensors"])
        // Killed between linking the --force output under its hidden name and renaming it.
        _ = try signalled(["convert", Self.large[0], "-o", out, "--force"], signal: SIGKILL, pause: "link:60")
        left = try leftovers(dir)
        #expect(left.count == 2 && left[0].hasPrefix(".out.safetensors.wsamerge-"), "\(left)")
        #expect(try TestSupport.wsamerge(["convert", Self.large[1], "-o", out, "--force"]).status == 0)
        #expect(try leftovers(dir) == ["out.safetensors"])
        // A sharded --force commit killed there leaves the backups of the replaced shards too.
        let shards = dir + "/shards"
        let args = ["--max-shard-size", "10MB", "-o", shards]
        #expect(try TestSupport.wsamerge(["convert", Self.large[0]] + args).status == 0)
        let set = try leftovers(shards)
        _ = try signalled(["convert", Self.large[1], "--force"] + args, signal: SIGKILL, pause: "link:60")
        left = try leftovers(shards).filter { $0.hasPrefix(".") }
        #expect(left.contains { $0.hasSuffix(".old") } && left.contains { $0.hasSuffix(".tmp") }, "\(left)")
        #expect(try TestSupport.wsamerge(["convert", Self.large[1], "--force"] + args).status == 0)
        #expect(try leftovers(shards) == set)
    }

    /// A sharded run that fails on a full file-size limit, with named temporaries, removes
    /// them and then the directory it created (it used to remove the directory first, and fail).
    @Test func failedShardedRunRemovesItsTemporariesThenItsDirectory() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let command = "ulimit -f 4096; WSAMERGE_TEST_NO_TMPFILE=1 exec '\(TestSupport.binary)' convert '\(Self.large[0])' --max-shard-size 10MB -o '\(dir)/new'"
        let run = try TestSupport.run("/bin/sh", ["-c", command])
        TestSupport.expectRefusal(run, code: 74, mentions: ["write failed"])
        #expect(try leftovers(dir).isEmpty)
    }

    /// SIGXFSZ is ignored by wsamerge itself: crossing `ulimit -f` is exit 74, also when the
    /// last (tail) write crosses it. Run with every signal unblocked and at its default action
    /// (this test runner's children inherit a blocked mask, which hid the signal).
    @Test func fileSizeLimitWithoutATrapIsAnIOError() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/merged.safetensors"
        #expect(try TestSupport.wsamerge(["convert", Self.large[0], "-o", out]).status == 0)
        let size = try #require(TestSupport.fileSize(out))
        try FileManager.default.removeItem(atPath: out)
        for limit in [1 << 20, size / 1024 * 1024] {
            let run = try TestSupport.runWithDefaultSignals(["convert", Self.large[0], "-o", out], fileSizeLimit: limit)
            TestSupport.expectRefusal(run, code: 74, mentions: [out, "write failed"])
            #expect(try leftovers(dir).isEmpty)
        }
    }

    /// Two runs writing one directory: the second fails at once (73) and the first completes;
    /// the directory holds the first's set only.
    @Test func concurrentShardedRunsDoNotMix() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let shards = dir + "/shards"
        var second: TestSupport.Result?
        let first = try runPaused(["convert", Self.large[0], "--max-shard-size", "10MB", "--force", "-o", shards], kill: false) {
            second = try TestSupport.wsamerge(["convert", Self.large[1], "--dtype", "F16", "--max-shard-size", "7MB", "--force", "-o", shards])
        }
        #expect(first.terminationStatus == 0)
        TestSupport.expectRefusal(try #require(second), code: 73, mentions: ["another wsamerge run"])
        // Four F32 shards of the first run (the second would have written two F16 ones).
        #expect(try leftovers(shards) == (1...4).map { "model-0000\($0)-of-00004.safetensors" } + ["model.safetensors.index.json"])
    }
}
