import CKernels

/// A way to merge one tensor from several inputs. Adding a strategy is one new file with a
/// type conforming to this protocol and one line in `Strategies.all`.
public protocol MergeStrategy {
    /// The `--strategy` value.
    static var identifier: String { get }
    /// One line for `wsamerge strategies` and `--help`.
    static var summary: String { get }
    /// The options this strategy reads, for `wsamerge strategies`.
    static var options: [StrategyOption] { get }

    /// Builds the strategy from the command's settings, refusing what it cannot use.
    init(_ settings: StrategySettings) throws

    /// Options in effect, written into the output metadata as `wsamerge.<key>`.
    var provenance: [(String, String)] { get }

    /// Runs once after the plan is checked and before anything is written (e.g. Fisher's pass
    /// over the Fisher files). Errors here still leave nothing behind.
    mutating func prepare(_ plan: MergePlan, jobs: Int) throws

    /// Runs once before the first tensor is merged, not for `--dry-run`: read-only passes the
    /// merge needs for every tensor (e.g. WSA's input scopes), which are faster done for all
    /// tensors side by side than one tensor at a time between writes.
    mutating func measure(_ plan: MergePlan, jobs: Int) throws

    /// Merges `item`, streaming its inputs as often as the method needs and sending the output
    /// values, in order, to `output` exactly once.
    func merge(_ item: MergePlan.Item, plan: MergePlan, jobs: Int, output: Lockstep.Output) throws -> TensorMergeResult
}

extension MergeStrategy {
    public mutating func prepare(_ plan: MergePlan, jobs: Int) throws {}
    public mutating func measure(_ plan: MergePlan, jobs: Int) throws {}
}

/// An option a strategy reads.
public struct StrategyOption: Sendable {
    public let name: String
    public let defaultValue: String?
    public let help: String
}

/// What happened to one merged tensor, for the report.
public struct TensorMergeResult {
    public var method: String
    public var fused: Scope?
    /// Whether some input value was NaN or infinite.
    public var nonFinite = false
    /// Whether the strategy fell back to another method for this tensor (zero std, no target).
    public var fallback = false

    public init(method: String, fused: Scope? = nil, nonFinite: Bool = false, fallback: Bool = false) {
        self.method = method
        self.fused = fused
        self.nonFinite = nonFinite
        self.fallback = fallback
    }
}

/// Every strategy setting the command line can give; each strategy reads its own.
public struct StrategySettings {
    public var fisherPaths: [String] = []
    public var fisherEpsilon = 1e-6
    public var fisherNormalize: FisherNormalize = .global
    public var wsaMinRank = 2
    public var scopeFusion: ScopeFusion = .linear
    public var targetScopePath: String?
    public var wsaRescale: WSARescale = .inputs

    public init() {}
}

/// The registry: every strategy `fuse` knows, in the order `wsamerge strategies` lists them.
public enum Strategies {
    public static let all: [any MergeStrategy.Type] = [AverageStrategy.self, FisherStrategy.self, WSAStrategy.self]

    public static func named(_ identifier: String) -> (any MergeStrategy.Type)? {
        all.first { $0.identifier == identifier }
    }

    /// The registry as JSON.
    public static var json: JSON {
        .array(all.map { strategy in
            .object([
                ("identifier", .string(strategy.identifier)),
                ("summary", .string(strategy.summary)),
                ("options", .array(strategy.options.map { option in
                    .object([("name", .string(option.name)),
                             ("default", option.defaultValue.map { .string($0) } ?? .null),
                             ("help", .string(option.help))])
                })),
            ])
        })
    }
}

/// A pass that writes `Σ w_k x_k` (the shared fallback of every strategy).
func weightedAverage(_ readers: [TensorReader], weights: [Double], jobs: Int, output: Lockstep.Output) throws -> Bool {
    var nonFinite = false
    let fused = FusedCombine(.average(weights: weights), inputs: readers.map(\.tensor.dtype), output: output.dtype)
    try Lockstep.run(readers, jobs: jobs, output: output, raw: fused?.kernel(false), kernel: { inputs, count, out in
        // ((w_0 x_0 + w_1 x_1) + w_2 x_2) + …: the order of a plain running sum.
        wsk_scale(out, inputs[0], weights[0], count)
        for k in 1..<inputs.count { wsk_axpy(out, inputs[k], weights[k], count) }
        return containsNonFinite(out, count)
    }, fold: { flags in if flags.contains(true) { nonFinite = true } })
    return nonFinite
}
