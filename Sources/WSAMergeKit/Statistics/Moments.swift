import CKernels

/// Mergeable summary statistics of a set of values: counts, extrema and the central moments up
/// to the fourth, all in float64. Two summaries combine exactly as if their values had been
/// seen in one pass (Chan et al. 1979; Pébay 2008), so blocks, chunks and threads can be
/// summarised separately and folded together in a fixed order.
///
/// Moments, `min`, `max` and `absSum` cover the finite values only; `nan` and `inf` count
/// the rest. With `n` finite values of mean `μ`:
/// ```
/// M2 = Σ (x − μ)²     M3 = Σ (x − μ)³     M4 = Σ (x − μ)⁴
/// std = √(M2 / n)     skewness = (M3/n) / (M2/n)^1.5     excess kurtosis = (M4/n) / (M2/n)² − 3
/// ```
public struct Moments: Sendable, Equatable {
    /// Number of finite values.
    public var n: Double = 0
    public var mean: Double = 0
    public var m2: Double = 0
    public var m3: Double = 0
    public var m4: Double = 0
    public var min: Double = .infinity
    public var max: Double = -.infinity
    /// Σ |x| over the finite values.
    public var absSum: Double = 0
    public var zeros = 0
    public var nan = 0
    public var inf = 0

    public init() {}

    /// Summarises `values` exactly: a two-pass computation (mean first, then central sums).
    ///
    /// - Complexity: O(count), two passes over memory the caller keeps in cache (a block).
    public init(values: UnsafePointer<Double>, count: Int) {
        self.init()
        // Pass 1 (CKernels): Σx, Σ|x|, extrema, zeros. Plain comparisons for the extrema: NaN
        // is handled by the careful path below.
        var first = wsk_pass1()
        wsk_moments_pass1(values, count, &first)
        let total = first.sum, absTotal = first.abs_sum
        let minimum = first.min, maximum = first.max
        let zeroCount = Int(first.zeros)
        guard total.isFinite, absTotal.isFinite else {
            // Non-finite values present, or finite values whose sum overflows: take a careful path.
            if (0..<count).contains(where: { !values[$0].isFinite }) {
                self = Moments(filtering: values, count: count)
            } else {
                self = Moments(scaling: values, count: count, largest: Swift.max(minimum.magnitude, maximum.magnitude))
            }
            return
        }
        n = Double(count)
        guard count > 0 else { return }
        mean = total / n
        min = minimum
        max = maximum
        absSum = absTotal
        zeros = zeroCount
        // All values equal: the moments are exactly zero (a rounded mean would make them noise).
        if minimum == maximum {
            mean = minimum
            return
        }
        // Pass 2: sums of powers of the deviations from the first-pass mean, Σd included, which
        // corrects that mean's rounding error (the corrected two-pass algorithm): with c = Σd/n,
        // the central sums around the exact mean are S2 − nc², S3 − 3cS2 + 2nc³ and
        // S4 − 4cS3 + 6c²S2 − 3nc⁴. Without it, skewness of values far from zero (1e6 ± 1e-3)
        // is off in the sixth digit.
        var second = wsk_pass2()
        wsk_moments_pass2(values, count, mean, &second)
        let c1 = second.s1, c2 = second.s2, c3 = second.s3, c4 = second.s4
        guard c2.isFinite, c3.isFinite, c4.isFinite else {
            // Powers of deviations that overflow (|x| past about 1e77): the scaled path keeps
            // the mean and whatever moments a Double holds, and never turns ∞ − ∞ into a std of 0.
            self = Moments(scaling: values, count: count, largest: Swift.max(minimum.magnitude, maximum.magnitude))
            return
        }
        let c = c1 / n
        mean += c
        m2 = c2 - n * c * c
        m3 = c3 - 3 * c * c2 + 2 * n * c * c * c
        m4 = c4 - 4 * c * c3 + 6 * c * c * c2 - 3 * n * c * c * c * c
    }

    /// Summarises finite values whose sum overflows: the values are scaled by a power of two
    /// (exact) to magnitudes below 2, summarised block by block, and the moments scaled back.
    /// Moments too large for a `Double` become infinite (reported as `null`).
    private init(scaling values: UnsafePointer<Double>, count: Int, largest: Double) {
        self.init()
        let exponent = Int(largest.exponent)
        let down = Double(sign: .plus, exponent: -exponent, significand: 1)
        let up = Double(sign: .plus, exponent: exponent, significand: 1)
        let block = Swift.min(count, Partition.blockElements)
        let storage = RawBuffer(byteCount: block * 8)
        defer { withExtendedLifetime(storage) {} }
        let scaled = storage.doubles(block)
        var start = 0
        while start < count {
            let n = Swift.min(block, count - start)
            for i in 0..<n { scaled[i] = values[start + i] * down }
            combine(Moments(values: scaled, count: n))
            start += n
        }
        // Scaled back one factor at a time: 0 stays 0 instead of 0 × ∞.
        mean = mean * up
        m2 = m2 * up * up
        m3 = m3 * up * up * up
        m4 = m4 * up * up * up * up
        absSum = absSum * up
        // Extrema and zeros from the values themselves (scaling can flush tiny ones to zero).
        min = (0..<count).reduce(Double.infinity) { Swift.min($0, values[$1]) }
        max = (0..<count).reduce(-Double.infinity) { Swift.max($0, values[$1]) }
        zeros = (0..<count).reduce(0) { $0 + (values[$1] == 0 ? 1 : 0) }
    }

    /// Summarises values that may include NaN or infinities, counting those apart.
    private init(filtering values: UnsafePointer<Double>, count: Int) {
        self.init()
        var start = 0
        while start < count {
            // Summarise each run of finite values exactly and fold it in.
            var end = start
            while end < count && values[end].isFinite { end += 1 }
            if end > start {
                combine(Moments(values: values + start, count: end - start))
            }
            if end < count {
                if values[end].isNaN { nan += 1 } else { inf += 1 }
            }
            start = end + 1
        }
    }

    /// Folds `other` in, as if its values had followed this summary's values.
    public mutating func combine(_ other: Moments) {
        nan += other.nan
        inf += other.inf
        zeros += other.zeros
        guard other.n > 0 else { return }
        guard n > 0 else {
            let (keepNaN, keepInf, keepZeros) = (nan, inf, zeros)
            self = other
            nan = keepNaN; inf = keepInf; zeros = keepZeros
            return
        }
        let na = n, nb = other.n, total = na + nb
        let delta = other.mean - mean
        let deltaN = delta / total
        let deltaN2 = deltaN * deltaN
        let term1 = delta * deltaN * na * nb
        let newM4 = m4 + other.m4
            + term1 * deltaN2 * (na * na - na * nb + nb * nb)
            + 6 * deltaN2 * (na * na * other.m2 + nb * nb * m2)
            + 4 * deltaN * (na * other.m3 - nb * m3)
        let newM3 = m3 + other.m3
            + term1 * deltaN * (na - nb)
            + 3 * deltaN * (na * other.m2 - nb * m2)
        m2 = m2 + other.m2 + term1
        m3 = newM3
        m4 = newM4
        mean = Self.combinedMean(mean, na, other.mean, nb, deltaN: deltaN)
        n = total
        min = Swift.min(min, other.min)
        max = Swift.max(max, other.max)
        absSum += other.absSum
    }

    /// The mean of two sets of values from their means and counts (`deltaN` = (b − a)/(na + nb)).
    static func combinedMean(_ a: Double, _ na: Double, _ b: Double, _ nb: Double, deltaN: Double) -> Double {
        if na == nb, (a + b).isFinite {
            return (a + b) / 2
        } else if deltaN.isFinite {
            return a + deltaN * nb
        } else {
            // Means near the largest Double on both sides: weigh them without overflowing.
            let total = na + nb
            return a * (na / total) + b * (nb / total)
        }
    }

    /// Population variance `M2 / n`, or `nil` without finite values (∞ when M2 overflows,
    /// reported as `null`).
    public var variance: Double? { n > 0 ? (m2.isNaN ? .nan : Swift.max(0, m2 / n)) : nil }
    /// Population standard deviation (ddof = 0).
    public var std: Double? { variance.map { $0.squareRoot() } }
    public var finiteMean: Double? { n > 0 ? mean : nil }
    public var finiteMin: Double? { n > 0 ? min : nil }
    public var finiteMax: Double? { n > 0 ? max : nil }
    public var absMean: Double? { n > 0 ? absSum / n : nil }
    /// `√Σx² = √(M2 + n μ²)` over the finite values.
    public var l2Norm: Double? { n > 0 ? (m2 + n * mean * mean).squareRoot() : nil }
    /// `(M3/n) / (M2/n)^1.5`, or `nil` when std is 0 or fewer than two values.
    public var skewness: Double? {
        guard n >= 2, let v = variance, v > 0 else { return nil }
        return (m3 / n) / (v * v.squareRoot())
    }
    /// `(M4/n) / (M2/n)² − 3`, or `nil` when std is 0 or fewer than two values.
    public var excessKurtosis: Double? {
        guard n >= 2, let v = variance, v > 0 else { return nil }
        return (m4 / n) / (v * v) - 3
    }
}

/// The part of `Moments` a scope needs — the count, mean and M2 of the finite values, and how
/// many are NaN or infinite — at about half the work (no Σ|x|, zeros, third or fourth powers).
/// The kernels use `Moments`' lanes and the folds are its own, so the mean and std are the same
/// bits as `Moments` gives (what `stats` and `scope` report); values whose sums could overflow
/// go through `Moments` itself.
struct ScopeMoments: Sendable {
    var n = 0.0
    var mean = 0.0
    var m2 = 0.0
    var nan = 0
    var inf = 0

    init() {}

    init(_ moments: Moments) {
        (n, mean, m2, nan, inf) = (moments.n, moments.mean, moments.m2, moments.nan, moments.inf)
    }

    /// The two passes of `Moments(values:count:)`, scope part only.
    init(values: UnsafePointer<Double>, count: Int) {
        var sum = 0.0, minimum = 0.0, maximum = 0.0
        wsk_scope_pass1(values, Int32(WSK_F64), count, nil, &sum, &minimum, &maximum)
        if let summary = ScopeMoments(values: values, count: count, sum: sum, minimum: minimum, maximum: maximum) {
            self = summary
        } else {
            self.init(Moments(values: values, count: count))
        }
    }

    /// The same from stored elements of a kernel `kind`, decoded into `scratch` (`count`
    /// doubles) while the first pass runs; nil when the sums could overflow (the decoded path
    /// then takes over).
    init?(elements: UnsafeRawPointer, kind: Int32, count: Int, scratch: UnsafeMutablePointer<Double>) {
        var sum = 0.0, minimum = 0.0, maximum = 0.0
        wsk_scope_pass1(elements, kind, count, scratch, &sum, &minimum, &maximum)
        self.init(values: scratch, count: count, sum: sum, minimum: minimum, maximum: maximum)
    }

    /// The rest of the computation from the first pass's results, or nil when they do not
    /// allow the fast path. Here Σ|x| ≤ count × max |x| is finite as well, so `Moments` would
    /// take its fast path too.
    private init?(values: UnsafePointer<Double>, count: Int, sum: Double, minimum: Double, maximum: Double) {
        let largest = Swift.max(minimum.magnitude, maximum.magnitude)
        // Σx, Σ|x| and the squares of the deviations all finite (else `Moments`' careful paths)
        guard sum.isFinite, largest * Double(count) < 0x1p1000, largest < 0x1p500 else { return nil }
        self.init()
        n = Double(count)
        guard count > 0 else { return }
        mean = sum / n
        if minimum == maximum {
            mean = minimum
            return
        }
        var s1 = 0.0, s2 = 0.0
        wsk_scope_pass2(values, count, mean, &s1, &s2)
        let c = s1 / n
        mean += c
        m2 = s2 - n * c * c
    }

    /// `Moments.combine`, scope part only.
    mutating func combine(_ other: ScopeMoments) {
        nan += other.nan
        inf += other.inf
        guard other.n > 0 else { return }
        guard n > 0 else {
            (n, mean, m2) = (other.n, other.mean, other.m2)
            return
        }
        let na = n, nb = other.n, total = na + nb
        let delta = other.mean - mean
        let deltaN = delta / total
        m2 = m2 + other.m2 + delta * deltaN * na * nb
        mean = Moments.combinedMean(mean, na, other.mean, nb, deltaN: deltaN)
        n = total
    }

    /// Mean and population std of the finite values (0 and 0 without any).
    var scope: Scope {
        n > 0 ? Scope(mean: mean, std: m2.isNaN ? .nan : Swift.max(0, m2 / n).squareRoot()) : Scope(mean: 0, std: 0)
    }
}
