/// Weighted average: `out = Σ w_i x_i`.
public struct AverageStrategy: MergeStrategy {
    public static let identifier = "average"
    public static let summary = "Weighted average of the inputs: out = Σ w_i x_i."
    public static let options: [StrategyOption] = []

    public init(_ settings: StrategySettings) throws {}

    public var provenance: [(String, String)] { [] }

    public func merge(_ item: MergePlan.Item, plan: MergePlan, jobs: Int, output: Lockstep.Output) throws -> TensorMergeResult {
        let nonFinite = try weightedAverage(try plan.readers(item), weights: item.weights, jobs: jobs, output: output)
        return TensorMergeResult(method: "average", nonFinite: nonFinite)
    }
}
