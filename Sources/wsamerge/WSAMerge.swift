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
            Reads safetensors (single or sharded), NumPy .npy/.npz and PyTorch .pt/.bin checkpoints \
            and Hugging Face model directories (MODEL+ADAPTER merges a PEFT LoRA adapter in), reports each tensor's weight scope as JSON, and \
            merges checkpoints with mergekit's methods (linear, TIES, DARE, DELLA, SLERP, … see \
            'wsamerge strategies'), Fisher averaging or WSA scope-fused rescale, from flags or a \
            mergekit YAML recipe.
            """,
        version: WSAMergeVersion.current,
        subcommands: [Inspect.self, Stats.self, ScopeCommand.self, Fuse.self, Convert.self, StrategiesCommand.self, Compare.self]
    )

    static func main() {
        CleanupOnSignal.install()
        do {
            try SIMDLevel.checkEnvironment()
            // Arguments are UTF-8: another encoding's bytes would be decoded with replacement
            // characters, naming a different file (or creating one).
            for i in 1..<Int(CommandLine.argc) where CommandLine.unsafeArgv[i].map({ String(validatingCString: $0) == nil }) ?? false {
                throw WSAMergeError.usage("argument \(i) is not UTF-8 text (\(CommandLine.arguments[i])); name the file in UTF-8")
            }
            // `--option=` with nothing after '=' made the argument parser (1.8.2) take the next
            // argument as its value: refused here instead.
            for argument in CommandLine.arguments.dropFirst().prefix(while: { $0 != "--" })
            where argument.hasPrefix("--") && argument.count > 3 && argument.firstIndex(of: "=") == argument.index(before: argument.endIndex) {
                throw WSAMergeError.usage("\(argument.dropLast()) has an empty value")
            }
            // `help NAME` with no such command printed the overview and exited 0.
            let arguments = CommandLine.arguments
            if arguments.count > 2, arguments[1] == "help" {
                let names = configuration.subcommands.map { $0._commandName }
                guard names.contains(arguments[2]) || arguments[2] == "help" || arguments[2].hasPrefix("-") else {
                    throw WSAMergeError.usage("no command '\(arguments[2])' (commands: \(names.joined(separator: ", ")))")
                }
            }
            var command = try parseAsRoot()
            try command.run()
        } catch let error as WSAMergeError {
            fail(describe(error), code: error.exitCode)
        } catch let failure as RecipeRunFailure {
            fail(failure.message, code: failure.error.exitCode)
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is CleanExit {  // help and --version, through `emit`'s checks
                let text = fullMessage(for: error)
                if !text.isEmpty { emit(text + "\n") }  // as the parser's own `print`
                Glibc.exit(0)
            }
            var message = oneLine(fullMessage(for: error))
            if message.isEmpty { message = "\(error)" }
            if message.hasPrefix("Error: ") { message.removeFirst(7) }
            fail(message, code: code == .validationFailure ? 64 : code.rawValue)
        }
    }

    /// One line on stderr (control characters in names escaped, so a name cannot end the line,
    /// forge another or reach the terminal), then exit.
    static func fail(_ message: String, code: Int32) -> Never {
        StandardStreams.write("wsamerge: \(Terminal.paint("error:", "1;31")) \(escapeControlCharacters(message))\n", to: StandardStreams.error)
        Glibc.exit(code)
    }
}

/// The argument parser's message on one line: its text before the help and usage, a list of values
/// ("  - average" lines) joined with commas.
func oneLine(_ message: String) -> String {
    var text = "", items: [String] = []
    for line in message.split(separator: "\n", omittingEmptySubsequences: false) {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("Usage:") || trimmed.hasPrefix("Help:") || (trimmed.isEmpty && !text.isEmpty) { break }
        if trimmed.hasPrefix("- ") { items.append(String(trimmed.dropFirst(2))) } else if !trimmed.isEmpty { text += (text.isEmpty ? "" : " ") + trimmed }
    }
    return items.isEmpty ? text : text + " " + items.joined(separator: ", ")
}

/// A library error in the command line's words: hints name the options that act on them.
func describe(_ error: WSAMergeError) -> String {
    guard case .hinted(let inner, let hint) = error else { return error.description }
    let option: String
    switch hint {
    case .onMissing: option = "pass --on-missing intersection or union to merge anyway"
    case .commonOnly: option = "pass --on-missing intersection to leave them out"
    case .force: option = "pass --force to replace it"
    case .parameter("weight"): option = "see --weights"
    case .parameter(let name): option = "see --param \(name)=VALUE"
    case .file(let role): option = "give --\(String(role.map { $0 == "_" ? "-" : $0 })) FILE" + (role == "fisher" ? " once per input, in input order" : "")
    case .outputDType: option = "pass --dtype F64, F32, F16 or BF16"
    case .stripPrefix(let prefix): option = "the names differ by '\(prefix)': pass --strip-prefix \(prefix)"
    case .oneTensor: option = "convert --include can select one; a merge writes every tensor (--include picks those merged), so write .npz or .safetensors"
    }
    return "\(describe(inner)); \(option)"
}

/// An error of a merge a recipe describes, in the recipe's words: a usage error names the recipe,
/// and a hint names the recipe's keys instead of options.
struct RecipeRunFailure: Error {
    let error: WSAMergeError
    let file: String

    var message: String {
        var inner = error, hint: WSAMergeError.Hint?
        if case .hinted(let unhinted, let given) = error { (inner, hint) = (unhinted, given) }
        var text = describe(inner)
        if case .usage = inner { text = "\(file): " + text }
        guard let hint else { return text }
        switch hint {
        case .parameter("weight"): return text + "; give every model a weight (under its parameters, or the recipe's)"
        case .parameter(let name): return text + "; give '\(name)' under the recipe's parameters or a model's"
        case .file(let role): return text + "; give '\(role)' for every model"
        case .onMissing: return text + "; set on_missing: intersection or union in the recipe to merge anyway"
        case .commonOnly: return text + "; set on_missing: intersection in the recipe to leave them out"
        case .outputDType: return text + "; set out_dtype (float64, float32, float16 or bfloat16) in the recipe"
        case .stripPrefix(let prefix): return text + "; the names differ by '\(prefix)': add strip_prefix: \(prefix) to the recipe"
        case .force, .oneTensor: return describe(error)
        }
    }
}

/// The report format of the commands that print one (all but `convert`).
struct ReportOptions: ParsableArguments {
    @Option(help: "Output format on stdout: json or table.")
    var format: OutputFormat = .json
}

/// Options every reading command shares.
struct CommonOptions: ParsableArguments {
    @Option(name: .customLong("include"), help: "Only tensors whose name matches this regular expression (repeatable).")
    var include: [String] = []

    @Option(name: .customLong("exclude"), help: "Skip tensors whose name matches this regular expression (repeatable).")
    var exclude: [String] = []

    @Flag(help: "No progress or warnings on stderr.")
    var quiet = false

    @Option(parsing: .unconditional, help: "Worker threads (default: all cores). Results are identical for every value.")
    var jobs: Int?

    @Option(name: .customLong("strip-prefix"), help: "Remove this leading prefix from tensor names, e.g. state_dict. or module. (repeatable).")
    var stripPrefixes: [String] = []

    /// Opens `paths` (Hugging Face ids from the local cache, as recipes do) with the prefixes stripped.
    func open(_ paths: [String]) throws -> [Checkpoint] { try CheckpointReader.open(try resolve(paths), stripping: stripPrefixes) }

    /// Each path as it is when it exists, else as a Hugging Face id in the local cache (`ModelResolver`).
    func resolve(_ paths: [String]) throws -> [String] { try paths.map { try ModelResolver.environment.resolve($0) } }

    func filter() throws -> TensorFilter { try TensorFilter(include: include, exclude: exclude) }

    /// Worker threads: `--jobs`, else every core; at most 64 (each holds a few blocks of scratch).
    var workerCount: Int { min(64, max(1, jobs ?? defaultJobs)) }

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs must be at least 1") }
    }
}

enum OutputFormat: String, ExpressibleByArgument {
    case json, table
}


/// Colour on stderr: only on a terminal, never with `NO_COLOR` set or `TERM=dumb`.
enum Terminal {
    /// `text` in the SGR colour `code` when colour is on.
    static func paint(_ text: String, _ code: String) -> String {
        StandardError.colour ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }
}

/// One summary line on stderr for a kind of warning, naming the first few tensors; nothing with
/// `--quiet` or when there is nothing to say.
func warnSummary(_ what: String, tensors names: [String], quiet: Bool) {
    guard !names.isEmpty, !quiet else { return }
    let shown = names.prefix(5).joined(separator: ", ")
    let more = names.count > 5 ? " and \(names.count - 5) more" : ""
    StandardStreams.write("wsamerge: \(Terminal.paint("warning:", "1;33")) \(names.count) tensor(s) \(what): \(escapeControlCharacters(shown))\(more)\n", to: StandardStreams.error)
}

/// Writes one JSON document as a line on stdout.
func emit(_ json: JSON) {
    var text = json.text
    text += "\n"
    emit(text)
}

/// Writes `text` to stdout (unbuffered, every byte). A reader that went away (EPIPE: `| head`)
/// ends the run quietly with exit 0; any other failure (a full disk, /dev/full) is an I/O error,
/// exit 74.
func emit(_ text: String) {
    let code = StandardStreams.write(text, to: StandardStreams.output)
    guard code == 0 else {
        if code == EPIPE { Glibc.exit(0) }
        WSAMerge.fail("<stdout>: write failed: \(String(cString: strerror(code)))", code: 74)
    }
}
