/// Model weights `w_i` of the averaging strategies (average, fisher, wsa): finite, ≥ 0, with a
/// positive sum, normalised to sum 1.
public enum Weights {
    /// `raw / Σ raw`, refusing weights that are not finite, negative, or sum to 0.
    public static func normalized(_ raw: [Double], method: String, tensor: String? = nil) throws -> [Double] {
        let at = tensor.map { " (tensor '\($0)')" } ?? ""
        guard raw.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
            throw WSAMergeError.hinted(.usage("\(method): weights must be finite and non-negative\(at)"), .parameter("weight"))
        }
        let scaled = unoverflowed(raw)
        let sum = scaled.reduce(0, +)
        guard sum > 0 else { throw WSAMergeError.hinted(.usage("\(method): weights must have a positive sum\(at)"), .parameter("weight")) }
        return scaled.map { $0 / sum }
    }

    /// Finite weights whose sum overflows, scaled by a power of two (exact: the same ratios) so
    /// that it does not; the weights unchanged otherwise.
    static func unoverflowed(_ raw: [Double]) -> [Double] {
        guard !raw.reduce(0, +).isFinite, raw.allSatisfy(\.isFinite), let largest = raw.map(\.magnitude).max() else { return raw }
        let scale = Double(sign: .plus, exponent: -largest.exponent - 8, significand: 1)
        return raw.map { $0 * scale }
    }
}
