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
/// Read-only passes: the variances (count of nonzero ones, then the exact top-k selection of
/// `Selection`), then `Σ d_i²`; the writing pass elects and combines.
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

    /// The population variances over the inputs of `δ_k = inputs[k][j] − b[j]` for the `count`
    /// elements of a block (two-pass per element: the mean first; sums in input order), into
    /// `variances`. Loops run input by input over the block, so they vectorise; each element's
    /// operations keep their order.
    static func variances(_ inputs: [UnsafeMutablePointer<Double>], _ n: Int, _ b: UnsafeMutablePointer<Double>, count: Int,
                          into variances: UnsafeMutablePointer<Double>) {
        let mean = UnsafeMutablePointer<Double>.allocate(capacity: count)
        defer { mean.deallocate() }
        mean.update(repeating: 0, count: count)
        for k in 0..<n {
            let x = inputs[k]
            for j in 0..<count { mean[j] += x[j] - b[j] }
        }
        let size = Double(n)
        for j in 0..<count { mean[j] /= size }
        variances.update(repeating: 0, count: count)
        for k in 0..<n {
            let x = inputs[k]
            for j in 0..<count {
                let d = (x[j] - b[j]) - mean[j]
                variances[j] += d * d
            }
        }
        for j in 0..<count { variances[j] /= size }
    }

    /// `selected[j]` = 1 where element j of the block at C-order `position` is selected by
    /// `window` (by its variance; every element without a window), else 0.
    static func mark(_ inputs: [UnsafeMutablePointer<Double>], _ n: Int, _ b: UnsafeMutablePointer<Double>, count: Int,
                     _ window: RankWindow?, at position: Int, into selected: UnsafeMutablePointer<Double>) {
        guard let window else {
            selected.update(repeating: 1, count: count)
            return
        }
        variances(inputs, n, b, count: count, into: selected)
        var cursor = window.cursor(at: position)
        for j in 0..<count { selected[j] = cursor.keeps(selected[j]) ? 1 : 0 }
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let topk = try context.parameters.number("select_topk", tensor: item.name)
        let n = item.sources.count, count = item.output.elementCount
        guard count > 0 else { return TensorMergeResult(method: "sce") }
        let context = self.context
        let readers: @Sendable () throws -> [TensorReader] = { try context.readers(item) + [try context.baseReader(item)] }

        // Which elements are selected: every one, or the top-k by variance.
        var window = RankWindow.all
        if topk < 1 {
            let pass = KeyPass(readers: readers, count: count, jobs: context.jobs, keys: { inputs, count, keys, _ in
                Self.variances(inputs, n, inputs[n], count: count, into: keys)
            })
            var nonzero = 0
            try pass.run({ keys, count, _ in
                var z = 0
                for j in 0..<count where keys[j] != 0 { z += 1 }
                return z
            }, fold: { blocks in for z in blocks { nonzero += z } })
            // ⌊count·select_topk⌋ of the float64 product; ≤ 0 keeps none.
            let k = topk <= 0 ? 0 : Int(topk * Double(nonzero))
            window = k > 0 ? try RankWindow.largest(k, of: pass) : .none
            if window.needsCensus { _ = try window.census(pass) }
        }
        let selecting = topk < 1, rule = window

        // Read-only pass: Σ d_i² per input (block sums folded in block order) and the selected count.
        struct Squares: Sendable { var sums: [Double]; var selected: Int }
        var sums = [Double](repeating: 0, count: n), selected = 0
        try Lockstep.run(try readers(), jobs: context.jobs, output: nil, positioned: { inputs, count, _, position in
            var block = Squares(sums: [Double](repeating: 0, count: n), selected: 0)
            let b = inputs[n]
            let keep = UnsafeMutablePointer<Double>.allocate(capacity: count)
            defer { keep.deallocate() }
            Self.mark(inputs, n, b, count: count, selecting ? rule : nil, at: position, into: keep)
            for j in 0..<count where keep[j] != 0 { block.selected += 1 }
            for k in 0..<n {
                let x = inputs[k]
                var sum = 0.0
                for j in 0..<count where keep[j] != 0 {
                    let d = x[j] - b[j]
                    sum += d * d
                }
                block.sums[k] = sum
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
            let b = inputs[n]
            // The selected task vectors d_k (0 where not selected), their sum, then the election.
            let sum = UnsafeMutablePointer<Double>.allocate(capacity: count)
            let mixed = UnsafeMutablePointer<Double>.allocate(capacity: count)
            let divisor = UnsafeMutablePointer<Double>.allocate(capacity: count)
            defer { sum.deallocate(); mixed.deallocate(); divisor.deallocate() }
            Self.mark(inputs, n, b, count: count, selecting ? rule : nil, at: position, into: divisor)
            sum.update(repeating: 0, count: count)
            for k in 0..<n {
                let x = inputs[k]
                for j in 0..<count {
                    x[j] = divisor[j] != 0 ? x[j] - b[j] : 0
                    sum[j] += x[j]
                }
            }
            mixed.update(repeating: 0, count: count)
            divisor.update(repeating: 0, count: count)
            for k in 0..<n {
                let x = inputs[k], w = weights[k]
                for j in 0..<count {
                    let d = x[j]
                    let agrees = sum[j] >= 0 ? d > 0 : d < 0
                    mixed[j] += agrees ? w * d : 0
                    divisor[j] += agrees ? w : 0
                }
            }
            var flag = false
            for j in 0..<count {
                let y = b[j] + mixed[j] / Swift.max(divisor[j], 1e-6)
                out[j] = y
                if !y.isFinite { flag = true }
            }
            return flag
        }, fold: { flags in if flags.contains(true) { nonFinite = true } })

        var details: [(String, JSON)] = [("weights", .array(omega.map { .double($0) })),
                                         ("selected", .double(Double(selected) / Double(count)))]
        if uniform { details.append(("uniform_weights", .bool(true))) }
        return TensorMergeResult(method: "sce", nonFinite: nonFinite, details: details)
    }
}
