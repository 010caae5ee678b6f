import CKernels

/// SCE (mergekit's `sce`: select, calculate, erase), per tensor, with `δ_i = x_i − b`:
/// ```
/// select_topk < 1:  var = population variance of δ over the inputs, per element;
///                   keep the ⌊count_nonzero(var)·select_topk⌋ elements of largest var
///                   (ties: earliest in C order), d_i = δ_i there and 0 elsewhere
/// otherwise:        d_i = δ_i
/// S = Σ d_i,  s = +1 where S ≥ 0 else −1,  k_i = sign(d_i) == s
/// ω_i = mean(d_i²) over the whole tensor, normalised to sum 1 (uniform 1/n when Σω < 1e-6)
/// out = b + Σ ω_i k_i d_i / max(Σ ω_i k_i, 1e-6)
/// ```
/// Read-only passes: the variances (the count of nonzero ones and the bracket of the exact
/// top-k selection of `Selection` in one scan), then `Σ d_i²`; the writing pass elects and
/// combines. The per-element work is in the C kernels (`wsk_sce_*`).
public struct SCEStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "sce",
        summary: "SCE: keep the elements whose task vectors vary most across inputs, elect signs, weight inputs by mean squared task vector.",
        base: .required, inputs: 1...Int.max,
        parameters: [
            ParameterDeclaration("select_topk", .number, .shared, default: .number(1),
                                 help: "Fraction of the elements of nonzero variance kept, largest variance first (1: all)."),
        ])

    let context: MergeContext

    public init(_ context: MergeContext) throws {
        self.context = context
        for item in context.plan.items where item.action == .merge {
            _ = try context.parameters.number("select_topk", tensor: item.name)
        }
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let topk = try context.parameters.number("select_topk", tensor: item.name)
        let n = item.sources.count, count = item.output.elementCount
        guard count > 0 else { return TensorMergeResult(method: "sce") }
        let context = self.context
        let readers: @Sendable () throws -> [TensorReader] = { try context.readers(item) + [try context.baseReader(item)] }

        // Which elements are selected: every one, or the top-k by variance, found in the same
        // pass that counts the nonzero variances.
        var window: RankWindow?
        if topk <= 0 {
            window = RankWindow.none
        } else if topk < 1 {
            let pass = KeyPass(readers: readers, count: count, jobs: context.jobs, keys: { inputs, count, keys, _ in
                let tensors: [UnsafeMutablePointer<Double>?] = inputs
                wsk_sce_variances(tensors, n, inputs[n], count, keys)
            })
            // ⌊nonzero·select_topk⌋ of the float64 product (select_topk ≤ 0 keeps none).
            var (selection, _) = try RankWindow.largest({ Int(topk * Double($0)) }, ofNonzero: pass)
            if selection.needsCensus { _ = try selection.census(pass) }
            window = selection
        }
        let rule = window

        // Read-only pass: Σ d_i² per input over the selected elements (block sums folded in
        // block order) and their count.
        struct Squares: Sendable { var sums: [Double]; var selected: Int64 }
        var sums = [Double](repeating: 0, count: n), selected: Int64 = 0
        try Lockstep.run(try readers(), jobs: context.jobs, output: nil, positioned: { inputs, count, _, position in
            var block = Squares(sums: [Double](repeating: 0, count: n), selected: 0)
            let tensors: [UnsafeMutablePointer<Double>?] = inputs
            if var cut = rule?.kernelWindow(at: position) {
                wsk_sce_squares(tensors, n, inputs[n], count, &cut, &block.sums, &block.selected)
            } else {
                wsk_sce_squares(tensors, n, inputs[n], count, nil, &block.sums, &block.selected)
            }
            return block
        }, fold: { blocks in
            for block in blocks {
                for k in 0..<n { sums[k] += block.sums[k] }
                selected += block.selected
            }
        })
        var omega = sums.map { $0 / Double(count) }
        let total = omega.reduce(0, +)
        let uniform = total < 1e-6
        omega = uniform ? [Double](repeating: 1 / Double(n), count: n) : omega.map { $0 / total }

        // The writing pass: elect signs on the unweighted d_i, combine with the ω_i of the agreeing inputs.
        let weights = omega
        var nonFinite = false
        try Lockstep.run(try readers(), jobs: context.jobs, output: output, positioned: { inputs, count, out, position in
            let tensors: [UnsafeMutablePointer<Double>?] = inputs
            if var cut = rule?.kernelWindow(at: position) {
                return wsk_sce_merge(tensors, n, inputs[n], count, &cut, weights, out) != 0
            }
            return wsk_sce_merge(tensors, n, inputs[n], count, nil, weights, out) != 0
        }, fold: { flags in if flags.contains(true) { nonFinite = true } })

        var details: [(String, JSON)] = [("weights", .array(omega.map { .double($0) })),
                                         ("selected", .double(Double(selected) / Double(count)))]
        if uniform { details.append(("uniform_weights", .bool(true))) }
        return TensorMergeResult(method: "sce", nonFinite: nonFinite, details: details)
    }
}
