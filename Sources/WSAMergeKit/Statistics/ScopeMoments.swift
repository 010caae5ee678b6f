import CKernels

/// The part of `Moments` a weight scope needs — count, mean and `M2 = Σ (x − μ)²` of the finite
/// values — computed in a lighter pass for merging. Blocks combine exactly (Chan et al.):
/// ```
/// n = n_a + n_b    δ = μ_b − μ_a    μ = μ_a + δ n_b / n    M2 = M2_a + M2_b + δ² n_a n_b / n
/// ```
struct ScopeMoments {
    var n = 0.0
    var mean = 0.0
    var m2 = 0.0
    /// NaN and infinite values seen (left out of the moments).
    var nonFinite = 0

    init() {}

    /// Two passes over one block: the mean, then the corrected sum of squared deviations.
    init(values: UnsafePointer<Double>, count: Int) {
        let sum = wsk_sum(values, count)
        guard sum.isFinite else {
            self = ScopeMoments(filtering: values, count: count)
            return
        }
        guard count > 0 else { return }
        n = Double(count)
        let mu = sum / n
        var deviation = 0.0, squares = 0.0
        wsk_deviations(values, count, mu, &deviation, &squares)
        // Corrected two-pass: shift the mean by the residual Σd/n and remove its share of M2.
        let c = deviation / n
        mean = mu + c
        m2 = Swift.max(0, squares - n * c * c)
    }

    private init(filtering values: UnsafePointer<Double>, count: Int) {
        self.init()
        var start = 0
        while start < count {
            var end = start
            while end < count && values[end].isFinite { end += 1 }
            if end > start {
                let run = ScopeMoments(values: values + start, count: end - start)
                // A finite run whose sum still overflows: count it as unusable rather than loop.
                if run.n == 0 && end > start { nonFinite += end - start } else { combine(run) }
            }
            if end < count { nonFinite += 1 }
            start = end + 1
        }
    }

    mutating func combine(_ other: ScopeMoments) {
        nonFinite += other.nonFinite
        guard other.n > 0 else { return }
        guard n > 0 else {
            let keep = nonFinite
            self = other
            nonFinite = keep
            return
        }
        let total = n + other.n
        let delta = other.mean - mean
        m2 += other.m2 + delta * delta * n * other.n / total
        mean += delta * other.n / total
        n = total
    }

    /// The scope, or `nil` without finite values.
    var scope: Scope? { n > 0 ? Scope(mean: mean, std: (m2 / n).squareRoot()) : nil }
}
