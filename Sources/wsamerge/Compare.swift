import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct Compare: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "How checkpoints differ per tensor and per layer; with --base, their task vectors' sizes, overlaps and sign conflicts.",
            discussion: """
                Without --base, every model is compared with the first: cosine, rel_l2 = ||X - A||/||A||, max_abs_diff and \
                changed elements. With --base, on the task vectors d = X - BASE: norm, rel_norm = ||d||/||BASE||, pairwise cosine, \
                sign_conflict (the fraction of elements whose nonzero d disagree in sign) and overlap_top (Jaccard overlap of \
                the top --density magnitudes). Float64, the same for every --jobs.
                """)

        @Argument(help: "Checkpoints to compare (the first is the reference without --base).")
        var files: [String]

        @Option(help: "The model the inputs were fine-tuned from: compare their task vectors.")
        var base: String?

        @Option(parsing: .unconditional, help: "Fraction of each task vector's largest magnitudes whose overlap is measured (with --base; default 0.2).")
        var density: Double?

        @Option(name: .customLong("group-by"), help: "Also pool the sums per layer index parsed from names: layer.")
        var groupBy: Stats.GroupBy?

        @Option(help: "Row order, most different first: storage (default), cosine, rel_l2, max_abs_diff, changed; with --base rel_norm, sign_conflict, overlap.")
        var sort: Comparison.SortKey = .storage

        @Option(help: "Also draw the compared quantity per layer (rel_l2, or rel_norm with --base) as an SVG file.")
        var plot: String?

        @Flag(help: "Replace an existing --plot file.")
        var force = false

        @OptionGroup var common: CommonOptions

        @OptionGroup var report: ReportOptions

        func validate() throws {
            if base == nil && files.count < 2 { throw ValidationError("compare needs at least two checkpoints (or --base and one)") }
            if files.isEmpty { throw ValidationError("compare needs at least one checkpoint besides --base") }
            if let density {
                guard base != nil else { throw ValidationError("--density needs --base") }
                guard density > 0 && density <= 1 else { throw ValidationError("--density must be > 0 and ≤ 1") }
            }
            if let needsBase = sort.needsBase, needsBase != (base != nil) {
                throw ValidationError("--sort \(sort.rawValue) " + (needsBase ? "needs --base" : "is not available with --base"))
            }
        }

        func run() throws {
            let checkpoints = try common.open(files)
            let baseCheckpoint = try base.map { try common.open([$0])[0] }
            let identities = (checkpoints + (baseCheckpoint.map { [$0] } ?? [])).reduce(into: Set<FileIdentity>()) { $0.formUnion($1.identities) }
            if let plot { try OutputFile.precheck(plot, force: force, inputs: identities) }
            var comparison = try Comparison(checkpoints, base: baseCheckpoint, density: density ?? 0.2,
                                            filter: try common.filter(), jobs: common.workerCount)
            comparison.sort(by: sort)
            if let plot { try writeText(Figures.compare(comparison).svg, to: plot, force: force, inputs: identities) }
            switch report.format {
            case .json: emit(comparison.json(layers: groupBy == .layer))
            case .table: emit(comparison.table(layers: groupBy == .layer))
            }
        }
    }
}

/// Writes `text` to `path` atomically (`-o`, `--plot`), refusing an input and, without `force`,
/// an existing file.
func writeText(_ text: String, to path: String, force: Bool, inputs: Set<FileIdentity>) throws {
    let file = try OutputFile(destination: path, force: force, inputs: inputs)
    try file.write(text)
    try file.commit()
}
