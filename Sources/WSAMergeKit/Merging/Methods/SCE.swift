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

    /// The population variance over the inputs of `δ_k = inputs[k][j] − b[j]` at element `j`
    /// (two-pass: the mean first; sums in input order).
    @inline(__always)
    static func variance(_ inputs: [UnsafeMutablePointer<Double>], _ n: Int, _ b: UnsafeMutablePointer<Double>, _ j: Int) -> Double {
        var sum = 0.0
        for k in 0..<n { sum += inputs[k][j] - b[j] }
        let mean = sum / Double(n)
        var squares = 0.0
        for k in 0..<n {
            let d = (inputs[k][j] - b[j]) - mean
            squares += d * d
        }
        return squares / Double(n)
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
                for j in 0..<count { keys[j] = Self.variance(inputs, n, inputs[n], j) }
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
            var cursor = rule.cursor(at: position)
            for j in 0..<count {
                if selecting && !cursor.keeps(Self.variance(inputs, n, b, j)) { continue }
                block.selected += 1
                for k in 0..<n {
                    let d = inputs[k][j] - b[j]
                    block.sums[k] += d * d
                }
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
            var cursor = rule.cursor(at: position)
            var flag = false
            for j in 0..<count {
                let keep = !selecting || cursor.keeps(Self.variance(inputs, n, b, j))
                var sum = 0.0
                if keep {
                    for k in 0..<n {
                        inputs[k][j] = inputs[k][j] - b[j]
                        sum += inputs[k][j]
                    }
                }
                var mixed = 0.0, divisor = 0.0
                if keep {
                    let positive = sum >= 0
                    for k in 0..<n {
                        let d = inputs[k][j]
                        if positive ? d > 0 : d < 0 {
                            mixed += weights[k] * d
                            divisor += weights[k]
                        }
                    }
                }
                let y = b[j] + mixed / Swift.max(divisor, 1e-6)
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
