/// Model weights `w_i`: finite, non-negative, with a positive sum, normalised to sum 1.
public enum Weights {
    /// Uniform weights when `raw` is `nil`.
    public static func normalized(_ raw: [Double]?, count: Int) throws -> [Double] {
        guard let raw else { return [Double](repeating: 1 / Double(count), count: count) }
        guard raw.count == count else {
            throw WSAMergeError.usage("--weights has \(raw.count) values for \(count) inputs")
        }
        guard raw.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
            throw WSAMergeError.usage("--weights must be finite and non-negative")
        }
        let sum = raw.reduce(0, +)
        guard sum > 0 else { throw WSAMergeError.usage("--weights must have a positive sum") }
        return raw.map { $0 / sum }
    }

    /// Parses `0.5,0.3,0.2`.
    public static func parse(_ text: String) throws -> [Double] {
        try text.split(separator: ",", omittingEmptySubsequences: false).map {
            guard let v = Double($0.filter { $0 != " " }) else {
                throw WSAMergeError.usage("--weights: '\($0)' is not a number")
            }
            return v
        }
    }
}
