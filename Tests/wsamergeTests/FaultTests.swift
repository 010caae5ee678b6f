import Foundation
import Testing

/// Faults around the files: kills, full disks, odd paths. Whatever happens, nothing is left at
/// `-o` and no temporary file stays behind.
@Suite(.serialized) struct FaultTests {
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

    @Test func killDuringFuseLeavesNothing() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/merged.safetensors"
        for delay in [0.05, 0.15, 0.3] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: TestSupport.binary)
            process.arguments = ["fuse", "--strategy", "wsa", "--jobs", "1"] + Self.large + ["-o", out, "--force"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            Thread.sleep(forTimeInterval: delay)
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            if process.terminationReason == .uncaughtSignal {
                #expect(!TestSupport.fileExists(out), "kill after \(delay)s left an output")
            } else {
                // It finished before the kill: then the output must be complete.
                #expect(process.terminationStatus == 0)
                try FileManager.default.removeItem(atPath: out)
            }
            let left = try leftovers(dir)
            #expect(left.isEmpty, "kill after \(delay)s left \(left)")
        }
    }

    @Test func killDuringConvertLeavesNothing() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/converted.npz"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestSupport.binary)
        process.arguments = ["convert", Self.large[0], "--compress", "-o", out]
        try process.run()
        Thread.sleep(forTimeInterval: 0.1)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        if process.terminationReason == .uncaughtSignal { #expect(!TestSupport.fileExists(out)) }
        #expect(try leftovers(dir, except: ["converted.npz"]).isEmpty)
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
            (dir + "/empty", 66, "neither"),
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
