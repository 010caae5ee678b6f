import ArgumentParser
import WSAMergeKit
#if canImport(Glibc)
import Glibc
#endif

extension WSAMerge {
    struct Fuse: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Merge checkpoints with a strategy (average, fisher, wsa) and print a JSON report.",
            discussion: """
                Every input is checked first (tensor names, shapes, dtypes, Fisher files, output path); \
                nothing is written unless all checks pass, and the output appears only when complete. \
                All strategies accumulate in float64 and round once to the output dtype.
                """)

        @Argument(help: "Checkpoints to merge (any mix of formats).")
        var inputs: [String]

        @Option(help: "Merge strategy: \(WSAMergeKit.Strategies.all.map { $0.identifier }.joined(separator: ", ")).")
        var strategy: String = "average"

        @Option(help: "Model weights w1,w2,… (finite, ≥ 0, positive sum; normalised). Default: uniform.")
        var weights: String?

        @Option(help: "Output dtype: keep (each tensor keeps the first input's dtype), F64, F32, F16 or BF16.")
        var dtype: String = "keep"

        @Option(name: .customLong("on-missing"), help: "Tensors missing from some inputs: error, intersection or union.")
        var onMissing: String = "error"

        @Option(parsing: .upToNextOption, help: "Fisher checkpoints, one per input (strategy fisher).")
        var fisher: [String] = []

        @Option(name: .customLong("fisher-epsilon"), help: "Added to every Fisher value (default 1e-6).")
        var fisherEpsilon: Double?

        @Option(name: .customLong("fisher-normalize"), help: "global (c_i = w_i / ‖F_i‖₂, the default) or none (c_i = w_i).")
        var fisherNormalize: String?

        @Option(name: .customLong("scope-fusion"), help: "WSA fused scope: linear (default), quadratic or mixture.")
        var scopeFusion: String?

        @Option(name: .customLong("target-scope"), help: "WSA target scopes from a `wsamerge scope -o` file.")
        var targetScope: String?

        @Option(name: .customLong("wsa-rescale"), help: "WSA rescale: inputs (default), output or both.")
        var wsaRescale: String?

        @Option(name: .customLong("wsa-min-rank"), help: "WSA: tensors of lower rank are averaged (default 2).")
        var wsaMinRank: Int?

        @Option(help: "Extra output metadata key=value (repeatable).")
        var metadata: [String] = []

        @Flag(name: .customLong("dry-run"), help: "Check everything and print the plan; write nothing.")
        var dryRun = false

        @Flag(help: "Refuse NaN or infinite input values instead of warning.")
        var strict = false

        @OptionGroup var output: OutputArguments
        @OptionGroup var common: CommonOptions

        func run() throws {
            var request = Merger.Request(inputs: inputs, strategy: strategy, output: try output.options())
            request.weights = try weights.map { try Weights.parse($0) }
            request.filter = try common.filter()
            request.onMissing = try choice(onMissing, "--on-missing")
            request.dtype = dtype == "keep" ? nil : try choice(dtype, "--dtype")
            try checkStrategyOptions()
            request.settings.fisherPaths = fisher
            if let fisherEpsilon { request.settings.fisherEpsilon = fisherEpsilon }
            if let fisherNormalize { request.settings.fisherNormalize = try choice(fisherNormalize, "--fisher-normalize") }
            if let scopeFusion { request.settings.scopeFusion = try choice(scopeFusion, "--scope-fusion") }
            request.settings.targetScopePath = targetScope
            if let wsaRescale { request.settings.wsaRescale = try choice(wsaRescale, "--wsa-rescale") }
            if let wsaMinRank { request.settings.wsaMinRank = wsaMinRank }
            request.extraMetadata = try metadata.map { pair in
                guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                    throw WSAMergeError.usage("--metadata expects key=value, got '\(pair)'")
                }
                return (String(pair[..<eq]), String(pair[pair.index(after: eq)...]))
            }
            request.strict = strict
            request.jobs = common.workerCount
            if dryRun {
                let (plan, _) = try Merger.plan(request)
                emit(Merger.dryRunJSON(plan, request: request))
                return
            }
            let report = try Merger.run(request, progress: Progress.forTerminal(label: "fuse", quiet: common.quiet))
            warnSummary("have NaN or infinite input values", tensors: report.nonFiniteTensors, quiet: common.quiet)
            warnSummary("fell back from the strategy", tensors: report.fallbacks, quiet: common.quiet)
            emit(report.json)
        }
    }
}

extension WSAMerge.Fuse {
    /// Refuses options of another strategy than the one chosen: a Fisher or WSA option given
    /// with `--strategy average` is almost always a mistake.
    func checkStrategyOptions() throws {
        let fisherOnly: [(String, Bool)] = [("--fisher", !fisher.isEmpty), ("--fisher-epsilon", fisherEpsilon != nil),
                                            ("--fisher-normalize", fisherNormalize != nil)]
        let wsaOnly: [(String, Bool)] = [("--scope-fusion", scopeFusion != nil), ("--target-scope", targetScope != nil),
                                         ("--wsa-rescale", wsaRescale != nil), ("--wsa-min-rank", wsaMinRank != nil)]
        for (owner, options) in [("fisher", fisherOnly), ("wsa", wsaOnly)] where strategy != owner {
            if let (flag, _) = options.first(where: { $0.1 }) {
                throw WSAMergeError.usage("\(flag) applies to --strategy \(owner), not \(strategy)")
            }
        }
    }
}

/// Parses an enumerated option value, listing the choices on error.
func choice<T: RawRepresentable & CaseIterable>(_ text: String, _ flag: String) throws -> T where T.RawValue == String {
    guard let value = T(rawValue: text) else {
        throw WSAMergeError.usage("\(flag) '\(text)' is not one of: \(T.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return value
}
