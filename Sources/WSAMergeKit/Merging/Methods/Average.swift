/// Weighted average, mergekit's `linear`:
/// ```
/// out = Σ w_i x_i / Σ w_i     (normalize, the default)
/// out = Σ w_i x_i             (normalize = false)
/// ```
/// Weights are finite, of any sign (as mergekit takes them); with `normalize` their sum must not
/// be 0. A tensor only some inputs hold (`--on-missing union`) is averaged over those.
public struct AverageStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "average", aliases: ["linear"],
        summary: "Weighted average of the inputs: out = Σ w_i x_i / Σ w_i (mergekit's linear).",
        base: .input,
        parameters: [
            ParameterDeclaration("weight", .number, .perInput, default: .number(1), help: "The input's weight w_i (default: uniform)."),
            ParameterDeclaration("normalize", .bool, .shared, default: .bool(true), help: "Divide by Σ w_i."),
        ])

    let context: MergeContext

    public init(_ context: MergeContext) throws {
        self.context = context
        for item in context.plan.items where item.action == .merge { _ = try weights(item) }
    }

    /// The weights of the sources of `item`, and what their weighted sum is divided by.
    func weights(_ item: MergePlan.Item) throws -> (weights: [Double], divisor: Double) {
        let parameters = context.parameters
        let method = parameters.declaration.identifier
        var raw = try item.sources.map { try parameters.number("weight", input: $0.input, tensor: item.name) }
        guard try parameters.bool("normalize", tensor: item.name) else { return (raw, 1) }
        raw = Weights.unoverflowed(raw)
        let sum = raw.reduce(0, +)
        guard sum != 0, sum.isFinite else {
            throw WSAMergeError.hinted(.usage("\(method): the weights sum to 0, so they cannot be normalised (tensor '\(item.name)')"),
                                       .parameter("weight"))
        }
        return (raw, sum)
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let (weights, divisor) = try weights(item)
        let nonFinite = try weightedAverage(try context.readers(item), weights: weights, divisor: divisor, jobs: context.jobs, output: output)
        return TensorMergeResult(method: "average", nonFinite: nonFinite)
    }
}
