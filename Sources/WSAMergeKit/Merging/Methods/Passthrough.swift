/// mergekit's `passthrough`: exactly one input, copied, or scaled when `scale` is given:
/// `out = x · scale`.
public struct PassthroughStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "passthrough", summary: "One input, unchanged or scaled: out = x · scale.", base: .none, inputs: 1...1,
        parameters: [ParameterDeclaration("scale", .number, .perInput, default: .number(1), help: "Factor applied to the input.")])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let scale = try context.parameters.number("scale", input: 0, tensor: item.name)
        let nonFinite = try weightedAverage(try context.readers(item), weights: [scale], jobs: context.jobs, output: output)
        return TensorMergeResult(method: scale == 1 ? "passthrough" : "passthrough (scaled)", nonFinite: nonFinite)
    }
}
