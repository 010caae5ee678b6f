import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct ScopeCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "scope",
            abstract: "Compare the models' weight scopes per tensor and fuse them into a target scope.",
            discussion: "With -o, the document is also written to a file: the target a WSA training loop regularises toward, and what `fuse --strategy wsa --target-scope` reads.")

        @Argument(help: "Checkpoints to compare.")
        var files: [String]

        @Option(parsing: .unconditional, help: "Model weights w1,w2,… (≥ 0, normalised). Default: uniform.")
        var weights: WeightList?

        @Option(name: .customLong("scope-fusion"), help: "Fusion rule: linear, quadratic or mixture.")
        var scopeFusion: ScopeFusion = .linear

        @Option(help: "Row order: storage (default), std_ratio or kl (most divergent first).")
        var sort: ScopeComparison.SortKey = .storage

        @Option(name: .shortAndLong, help: "Also write the scope document (the fused target) to this file.")
        var output: String?

        @Option(help: "Also draw each model's std per layer, with the fused target dashed, as an SVG file.")
        var plot: String?

        @Flag(help: "Replace an existing -o or --plot file.")
        var force = false

        @OptionGroup var common: CommonOptions

        @OptionGroup var report: ReportOptions

        func validate() throws {
            if let plot, let output, sameFile(plot, output) { throw ValidationError("--plot and -o name the same file") }
        }

        func run() throws {
            let checkpoints = try common.open(files)
            let raw = weights?.values ?? [Double](repeating: 1, count: checkpoints.count)
            guard raw.count == checkpoints.count else {
                throw ValidationError("--weights has \(raw.count) values for \(checkpoints.count) models")
            }
            let w = try Weights.normalized(raw, method: "scope")
            let identities = checkpoints.reduce(into: Set<FileIdentity>()) { $0.formUnion($1.identities) }
            if let output { try OutputFile.precheck(output, force: force, inputs: identities) }
            if let plot { try OutputFile.precheck(plot, force: force, inputs: identities) }
            var comparison = try ScopeComparison(checkpoints, weights: w, fusion: scopeFusion,
                                                 filter: try common.filter(), jobs: common.workerCount)
            comparison.sort(by: sort)
            if let output { try writeText(comparison.json.text + "\n", to: output, force: force, inputs: identities) }
            if let plot { try writeText(Figures.scope(comparison).svg, to: plot, force: force, inputs: identities) }
            switch report.format {
            case .json: emit(comparison.json)
            case .table: emit(comparison.table)
            }
        }
    }
}
