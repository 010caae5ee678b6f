import ArgumentParser
import WSAMergeKit
#if canImport(Glibc)
import Glibc
#endif

/// The command line: one subcommand per file, each a thin layer over one library call.
@main
struct WSAMerge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wsamerge",
        abstract: "Measure, fuse and merge the weight scopes of neural-network checkpoints.",
        discussion: """
            Reads safetensors (single or sharded) and NumPy .npy/.npz checkpoints, reports each \
            tensor's weight scope as JSON, and merges checkpoints with weighted average, Fisher \
            averaging or WSA scope-fused rescale.
            """,
        version: WSAMergeVersion.current,
        subcommands: [Inspect.self, Stats.self, Scope.self, Fuse.self, Convert.self, Strategies.self]
    )

    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let error as WSAMergeError {
            fail(error.description, code: error.exitCode)
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is CleanExit { exit(withError: error) }
            var message = fullMessage(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            if message.hasPrefix("Error: ") { message.removeFirst(7) }
            fail(message, code: code == .validationFailure ? 64 : code.rawValue)
        }
    }

    static func fail(_ message: String, code: Int32) -> Never {
        fputs("wsamerge: error: \(message)\n", stderr)
        Glibc.exit(code)
    }
}

/// Options every reading command shares.
struct CommonOptions: ParsableArguments {
    @Option(name: .customLong("include"), help: "Only tensors whose name matches this regular expression (repeatable).")
    var include: [String] = []

    @Option(name: .customLong("exclude"), help: "Skip tensors whose name matches this regular expression (repeatable).")
    var exclude: [String] = []

    @Option(help: "Output format on stdout: json or table.")
    var format: OutputFormat = .json

    @Flag(help: "No progress or warnings on stderr.")
    var quiet = false

    @Option(help: "Worker threads (default: all cores). Results are identical for every value.")
    var jobs: Int?

    func filter() throws -> TensorFilter { try TensorFilter(include: include, exclude: exclude) }

    var workerCount: Int { max(1, jobs ?? defaultJobs) }

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs must be at least 1") }
    }
}

enum OutputFormat: String, ExpressibleByArgument {
    case json, table
}

extension DType: ExpressibleByArgument {
    /// `--dtype` offers the conversion targets only.
    public static var allValueStrings: [String] { DType.targets.map(\.rawValue) }
}

/// Writes one JSON document as a line on stdout.
func emit(_ json: JSON) {
    var text = json.text
    text += "\n"
    fputs(text, stdout)
}

func emit(_ text: String) {
    fputs(text, stdout)
}
