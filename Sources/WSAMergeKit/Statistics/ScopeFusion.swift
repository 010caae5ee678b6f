#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A layer's weight scope: the mean and population standard deviation of its parameters.
public struct Scope: Sendable, Equatable {
    public var mean: Double
    public var std: Double

    public init(mean: Double, std: Double) {
        self.mean = mean
        self.std = std
    }

    var json: JSON { .object([("mean", .number(mean)), ("std", .number(std))]) }
}

/// How several models' scopes fuse into one target scope (weights `w_i` sum to 1).
///
/// Every rule uses `μ_f = Σ w_i μ_i`; they differ in the spread:
/// ```
/// linear     σ_f = Σ w_i σ_i
/// quadratic  σ_f = √(Σ w_i σ_i²)
/// mixture    σ_f² = Σ w_i (σ_i² + μ_i²) − μ_f²     (the variance of the weighted mixture)
/// ```
/// The mixture's variance is evaluated as `Σ w_i (σ_i² + (μ_i − μ_f)²)`, equal when the weights
/// sum to 1, which keeps its precision when |μ| ≫ σ (a LayerNorm weight: μ = 1, σ = 2e-6), where
/// the difference of the two sums cancels.
public enum ScopeFusion: String, CaseIterable, Sendable {
    case linear, quadratic, mixture

    public func fuse(_ scopes: [Scope], weights: [Double]) -> Scope {
        var mean = 0.0
        for (s, w) in zip(scopes, weights) { mean += w * s.mean }
        var std = 0.0
        switch self {
        case .linear:
            for (s, w) in zip(scopes, weights) { std += w * s.std }
        case .quadratic:
            for (s, w) in zip(scopes, weights) { std += w * s.std * s.std }
            std = std.squareRoot()
        case .mixture:
            var variance = 0.0
            for (s, w) in zip(scopes, weights) { variance += w * (s.std * s.std + (s.mean - mean) * (s.mean - mean)) }
            std = variance.isNaN ? .nan : Swift.max(0, variance).squareRoot()  // undefined stays undefined
        }
        return Scope(mean: mean, std: std)
    }

    /// `KL(N(μ_p, σ_p²) ‖ N(μ_q, σ_q²)) = ln(σ_q/σ_p) + (σ_p² + (μ_p − μ_q)²) / (2σ_q²) − ½`,
    /// or `nil` when either std is 0 (the divergence is undefined or infinite).
    public static func kl(_ p: Scope, _ q: Scope) -> Double? {
        guard p.std > 0, q.std > 0 else { return nil }
        let d = p.mean - q.mean
        return (q.std / p.std).logarithm + (p.std * p.std + d * d) / (2 * q.std * q.std) - 0.5
    }
}

extension Double {
    /// Natural logarithm (kept local so the library needs no Foundation).
    var logarithm: Double {
        #if canImport(Glibc)
        return Glibc.log(self)
        #else
        return Darwin.log(self)
        #endif
    }
}
