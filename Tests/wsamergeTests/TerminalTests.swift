import Foundation
import Testing

/// Progress and colour appear only on a terminal (run under `script`, which gives the command a
/// pseudo-terminal), never in pipes, with `--quiet`, with `TERM=dumb` or (colour) `NO_COLOR`.
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/script"), "needs util-linux script"))
struct TerminalTests {
    static let m = TestSupport.fixtures + "/merge"

    /// Runs `command` (a shell line) on a pseudo-terminal; returns everything it printed.
    func onTerminal(_ command: String) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/script") else {
            Issue.record("util-linux `script` is needed for terminal tests")
            return ""
        }
        return try TestSupport.run("/usr/bin/script", ["-qec", command, "/dev/null"]).stdout
    }

    func fuse(_ prefix: String, _ flags: String = "", output: String) -> String {
        "\(prefix) '\(TestSupport.binary)' fuse \(flags) '\(Self.m)/a.safetensors' '\(Self.m)/b.safetensors' -o '\(output)'"
    }

    @Test func progressOnlyOnATerminal() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let shown = try onTerminal(fuse("env -u NO_COLOR TERM=xterm", output: dir + "/1.safetensors"))
        #expect(shown.contains("fuse: 6/6 tensors"), "\(shown)")
        #expect(shown.contains("\r\u{1B}[K"))
        for (prefix, flags) in [("TERM=dumb", ""), ("TERM=xterm", "--quiet")] {
            let out = dir + "/\(UUID().uuidString).safetensors"
            let quiet = try onTerminal(fuse(prefix, flags, output: out))
            #expect(!quiet.contains("tensors,"), "\(prefix) \(flags): \(quiet)")
            #expect(TestSupport.fileExists(out))
        }
        let piped = try TestSupport.wsamerge(["fuse", Self.m + "/a.safetensors", Self.m + "/b.safetensors", "-o", dir + "/p.safetensors"])
        #expect(piped.stderr.isEmpty)
    }

    @Test func colourOnlyOnATerminalWithoutNoColor() throws {
        let missing = "'\(TestSupport.binary)' stats /nonexistent.safetensors"
        #expect(try onTerminal("env -u NO_COLOR TERM=xterm \(missing)").contains("\u{1B}[1;31merror:"))
        #expect(!(try onTerminal("TERM=xterm NO_COLOR=1 \(missing)")).contains("\u{1B}["))
        #expect(!(try onTerminal("TERM=dumb \(missing)")).contains("\u{1B}["))
        #expect(try TestSupport.wsamerge(["stats", "/nonexistent.safetensors"]).stderr.hasPrefix("wsamerge: error: "))
    }
}
