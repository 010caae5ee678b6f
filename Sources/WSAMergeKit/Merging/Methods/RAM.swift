/// RAM (mergekit's `ram`): average each element over the inputs that moved it, per tensor, with
/// `δ_i = x_i − b`:
/// ```
/// nz_i = |δ_i| > epsilon,  cnt = Σ nz_i
/// out = b + Σ_i δ_i nz_i / cnt   where cnt ≥ 1,  b where no input moved
/// ```
public struct RAMStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "ram",
        summary: "RAM: average each element's task vectors over the inputs that moved it (|δ| > epsilon).",
        base: .required, inputs: 1...Int.max,
        parameters: [
            ParameterDeclaration("epsilon", .number, .shared, default: .number(1e-5), help: "An input moved an element when |δ| > epsilon."),
        ])

    let context: MergeContext

    public init(_ context: MergeContext) throws {
        self.context = context
        for item in context.plan.items where item.action == .merge {
            _ = try context.parameters.number("epsilon", tensor: item.name)
        }
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let epsilon = try context.parameters.number("epsilon", tensor: item.name)
        return try RAMMerge(item: item, context: context, epsilon: epsilon, lambdas: nil).merge(output: output, method: "ram")
    }
}

/// RAM+ with task-level rescaling (mergekit's `ramplus_tl`): as `ram`, but an input's values at
/// elements only it moved are lifted by how much of its update it shares with others:
/// ```
/// shared_i = #(nz_i ∧ cnt > 1),  uniq_i = #(nz_i ∧ cnt = 1)        (over the whole tensor)
/// ρ_i = shared_i / max(uniq_i, epsilon),  λ_i = 1 + r·clamp(ρ_i, 0, alpha)
/// out = b + λ_k δ_k                 where only input k moved (cnt = 1)
/// out = b + Σ_i δ_i nz_i / cnt      where cnt > 1 (as in ram),  b where no input moved
/// ```
public struct RAMPlusTLStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "ramplus_tl",
        summary: "RAM+ (task level): as ram, lifting each input's unique updates by how much of its update it shares.",
        base: .required, inputs: 1...Int.max,
        parameters: [
            ParameterDeclaration("epsilon", .number, .shared, default: .number(1e-5), help: "An input moved an element when |δ| > epsilon."),
            ParameterDeclaration("r", .number, .shared, default: .number(0.1), help: "Strength of the lift: λ_i = 1 + r·clamp(ρ_i, 0, alpha)."),
            ParameterDeclaration("alpha", .number, .shared, default: .number(0.2), help: "Cap on the shared-to-unique ratio ρ_i."),
        ])

    let context: MergeContext

    public init(_ context: MergeContext) throws {
        self.context = context
        for item in context.plan.items where item.action == .merge {
            for name in ["epsilon", "r", "alpha"] { _ = try context.parameters.number(name, tensor: item.name) }
        }
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let p = context.parameters
        let epsilon = try p.number("epsilon", tensor: item.name)
        let r = try p.number("r", tensor: item.name), alpha = try p.number("alpha", tensor: item.name)
        let n = item.sources.count
        // Read-only pass: per input, the elements it moved alone and those it shares.
        struct Counts: Sendable { var shared: [Int]; var unique: [Int] }
        var shared = [Int](repeating: 0, count: n), unique = [Int](repeating: 0, count: n)
        if item.output.elementCount > 0 {
            try Lockstep.run(try context.readers(item) + [try context.baseReader(item)], jobs: context.jobs, output: nil,
                             kernel: { inputs, count, _ in
                var block = Counts(shared: [Int](repeating: 0, count: n), unique: [Int](repeating: 0, count: n))
                let b = inputs[n]
                for j in 0..<count {
                    var moved = 0
                    for k in 0..<n where Swift.abs(inputs[k][j] - b[j]) > epsilon { moved += 1 }
                    guard moved > 0 else { continue }
                    for k in 0..<n where Swift.abs(inputs[k][j] - b[j]) > epsilon {
                        if moved == 1 { block.unique[k] += 1 } else { block.shared[k] += 1 }
                    }
                }
                return block
            }, fold: { blocks in
                for block in blocks {
                    for k in 0..<n {
                        shared[k] += block.shared[k]
                        unique[k] += block.unique[k]
                    }
                }
            })
        }
        let lambdas = (0..<n).map { k in
            // An input that moved nothing has ρ = 0 (its λ is never used; 0/0 would be NaN when epsilon is 0).
            let rho = shared[k] == 0 ? 0 : Double(shared[k]) / Swift.max(Double(unique[k]), epsilon)
            return 1 + r * Swift.min(Swift.max(rho, 0), alpha)
        }
        return try RAMMerge(item: item, context: context, epsilon: epsilon, lambdas: lambdas).merge(output: output, method: "ramplus_tl")
    }
}

/// The writing pass of `ram` (no `lambdas`) and `ramplus_tl`.
struct RAMMerge {
    let item: MergePlan.Item
    let context: MergeContext
    let epsilon: Double
    /// ramplus_tl's λ_i, which multiply the contributions at elements one input moved alone.
    let lambdas: [Double]?

    func merge(output: Lockstep.Output, method: String) throws -> TensorMergeResult {
        let n = item.sources.count, count = item.output.elementCount
        let epsilon = self.epsilon, lambdas = self.lambdas
        var unmoved = 0, nonFinite = false
        try Lockstep.run(try context.readers(item) + [try context.baseReader(item)], jobs: context.jobs, output: output,
                         kernel: { inputs, count, out in
            let b = inputs[n]
            var still = 0, flag = false
            for j in 0..<count {
                var moved = 0
                for k in 0..<n {
                    let d = inputs[k][j] - b[j]
                    inputs[k][j] = d
                    if Swift.abs(d) > epsilon { moved += 1 }
                }
                guard moved > 0 else {
                    out[j] = b[j]
                    still += 1
                    if !b[j].isFinite { flag = true }
                    continue
                }
                // One input moved: its δ (× λ_k for ramplus_tl); several: their mean, as in ram.
                var sum = 0.0
                for k in 0..<n where Swift.abs(inputs[k][j]) > epsilon {
                    sum += (moved == 1 ? lambdas?[k] ?? 1 : 1) * inputs[k][j]  // × 1 is exact
                }
                out[j] = b[j] + (moved == 1 ? sum : sum / Double(moved))
                if !out[j].isFinite { flag = true }
            }
            return (still, flag)
        }, fold: { blocks in
            for (still, flag) in blocks {
                unmoved += still
                if flag { nonFinite = true }
            }
        })
        var details: [(String, JSON)] = []
        if let lambdas { details.append(("lambda", .array(lambdas.map { .double($0) }))) }
        details.append(("unmoved", .double(count == 0 ? 0 : Double(unmoved) / Double(count))))
        return TensorMergeResult(method: method, nonFinite: nonFinite, details: details)
    }
}
