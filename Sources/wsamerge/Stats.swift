import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per-tensor weight scope and distribution statistics, one JSON document per input.")

        @Argument(help: "Checkpoints to measure.")
        var files: [String]

        @Option(name: .customLong("group-by"), help: "Also pool scopes per layer index parsed from names: layer.")
        var groupBy: GroupBy?

        @OptionGroup var common: CommonOptions

        @OptionGroup var report: ReportOptions

        enum GroupBy: String, ExpressibleByArgument { case layer }

        func run() throws {
            let filter = try common.filter()
            for checkpoint in try common.open(files) {
                let statistics = try StatisticsRun.measure(checkpoint, filter: filter, jobs: common.workerCount,
                                                           progress: Progress.forTerminal(label: "stats", quiet: common.quiet))
                switch report.format {
                case .json: emit(CheckpointReports.stats(checkpoint, statistics, groupByLayer: groupBy == .layer))
                case .table: emit(CheckpointReports.statsTable(checkpoint, statistics, groupByLayer: groupBy == .layer))
                }
                warnSummary("skipped (dtype not decoded)", tensors: statistics.filter { $0.moments == nil }.map(\.tensor.name), quiet: common.quiet)
            }
        }
    }
}
