/// Statistics of one tensor: its moments over the decoded float64 values, or why it was skipped.
public struct TensorStatistics: Sendable {
    public let tensor: TensorInfo
    /// `nil` when the dtype cannot be decoded (see `skipped`).
    public let moments: Moments?
    public var skipped: String? { moments == nil ? tensor.dtype.undecodableReason : nil }

    /// Streams `reader` once through `Lockstep` (reading ahead while blocks are decoded and
    /// summarised in parallel), folding block moments in block order.
    ///
    /// - Complexity: O(n) time, O(jobs × block + chunk) memory.
    public static func compute(_ reader: TensorReader, jobs: Int) throws -> TensorStatistics {
        let tensor = reader.tensor
        guard tensor.dtype.isDecodable else { return TensorStatistics(tensor: tensor, moments: nil) }
        var total = Moments()
        try Lockstep.run([reader], jobs: jobs, output: nil, kernel: { inputs, count, _ in
            Moments(values: inputs[0], count: count)
        }, fold: { blocks in
            for m in blocks { total.combine(m) }
        })
        return TensorStatistics(tensor: tensor, moments: total)
    }
}
