import Foundation
import Testing

/// The committed man page, completions and `--version` agree with the command definitions.
@Suite struct ManualTests {
    static let page = (try? String(contentsOfFile: TestSupport.root + "/man/wsamerge.1", encoding: .utf8)) ?? ""

    /// Every subcommand with its option names and help texts, from the parser's own dump.
    func commands() throws -> [(name: String, options: [String], abstracts: [String])] {
        let dump = try TestSupport.wsamerge(["--experimental-dump-help"])
        let root = try #require((try dump.json() as? [String: Any])?["command"] as? [String: Any])
        return (root["subcommands"] as? [[String: Any]] ?? []).map { command in
            let arguments = command["arguments"] as? [[String: Any]] ?? []
            let options = arguments.flatMap { ($0["names"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String } }
            let abstracts = arguments.compactMap { $0["abstract"] as? String }.filter { !$0.isEmpty }
            return (command["commandName"] as! String, options, abstracts)
        }
    }

    @Test func pageMatchesTheParser() throws {
        #expect(!Self.page.isEmpty, "man/wsamerge.1 is missing: run `make man`")
        let commands = try commands()
        #expect(commands.count >= 6)
        for command in commands {
            #expect(Self.page.contains(".It Em \(command.name)"), "man page lacks subcommand \(command.name): run `make man`")
            for option in command.options where option.count > 1 {
                let listed = Self.page.contains("Fl -\(option)") || Self.page.contains(" , -\(option)")
                #expect(listed, "man page lacks \(command.name) --\(option): run `make man`")
            }
            // Help texts, up to the first character roff escapes.
            for abstract in command.abstracts {
                let plain = String(abstract.prefix { $0.isASCII && $0 != "\\" && $0 != "`" && $0 != "'" })
                #expect(Self.page.contains(plain), "man page help text is stale for \(command.name): '\(plain)': run `make man`")
            }
        }
    }

    @Test func pageHasExamplesAndExitStatus() {
        #expect(Self.page.contains(".Sh EXAMPLES"))
        for code in ["64", "65", "66", "73", "74"] { #expect(Self.page.contains(".It \(code)\n")) }
    }

    @Test(.enabled(if: TestSupport.hasCommand("groff"), "needs groff"))
    func pageRendersWithoutWarnings() throws {
        let run = try TestSupport.run("/bin/sh", ["-c", "groff -mandoc -Tutf8 -ww '\(TestSupport.root)/man/wsamerge.1' >/dev/null"])
        #expect(run.status == 0)
        #expect(run.stderr.isEmpty, "\(run.stderr)")
    }

    @Test(arguments: ["bash", "zsh", "fish"])
    func completionScripts(_ shell: String) throws {
        let run = try TestSupport.wsamerge(["--generate-completion-script", shell])
        #expect(run.status == 0)
        for word in ["fuse", "scope", "strategy", "target-scope"] { #expect(run.stdout.contains(word), "\(shell) lacks \(word)") }
    }

    @Test func versionIsTheOneWrittenToMetadata() throws {
        let run = try TestSupport.wsamerge(["--version"])
        #expect(run.status == 0)
        let version = run.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!version.isEmpty)
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let m = TestSupport.fixtures + "/merge"
        #expect(try TestSupport.wsamerge(["fuse", m + "/a.safetensors", m + "/b.safetensors", "-o", dir + "/o.safetensors"]).status == 0)
        let inspect = try TestSupport.wsamerge(["inspect", dir + "/o.safetensors"])
        let metadata = (try inspect.json() as? [String: Any])?["metadata"] as? [String: String]
        #expect(metadata?["wsamerge.version"] == version)
    }
}
