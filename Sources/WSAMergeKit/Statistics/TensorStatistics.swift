/// Statistics of one tensor: its moments over the decoded float64 values, or why it was skipped.
public struct TensorStatistics: Sendable {
    public let tensor: TensorInfo
    /// `nil` when the dtype cannot be decoded (see `skipped`).
    public let moments: Moments?
    public var skipped: String? { moments == nil ? tensor.dtype.undecodableReason : nil }

    /// Streams `reader` once: chunks of `Partition.chunkElements`, each split in blocks that are
    /// decoded and summarised in parallel, then folded in block order.
    ///
    /// - Complexity: O(n) time, O(jobs × block + chunk) memory.
    public static func compute(_ reader: TensorReader, jobs: Int) throws -> TensorStatistics {
        let tensor = reader.tensor
        guard tensor.dtype.isDecodable else { return TensorStatistics(tensor: tensor, moments: nil) }
        var total = Moments()
        try forEachDecodedBlock(reader, jobs: jobs) { blockMoments in
            for m in blockMoments { total.combine(m) }
        } summarise: { values, count in
            Moments(values: values, count: count)
        }
        return TensorStatistics(tensor: tensor, moments: total)
    }
}

/// Reads `reader` chunk by chunk; in each chunk, decodes every block to float64 and maps it with
/// `summarise` in parallel, then hands the chunk's results, in block order, to `fold`.
func forEachDecodedBlock<T>(_ reader: TensorReader, jobs: Int, fold: ([T]) -> Void,
                            summarise: @escaping (UnsafePointer<Double>, Int) -> T) throws {
    let dtype = reader.tensor.dtype
    let width = dtype.byteWidth!
    let block = Partition.blockElements
    let chunkCapacity = Swift.min(Partition.chunkElements, Swift.max(reader.tensor.elementCount, 1))
    let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkCapacity * width, alignment: 64)
    defer { raw.deallocate() }
    let scratch = ScratchPool(workers: jobs, capacity: block)
    var remaining = reader.tensor.elementCount
    while remaining > 0 {
        let count = Swift.min(remaining, chunkCapacity)
        try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count * width]))
        let blocks = (count + block - 1) / block
        var results = [T?](repeating: nil, count: blocks)
        results.withUnsafeMutableBufferPointer { out in
            let base = raw.baseAddress!
            parallelFor(blocks, jobs: jobs) { b, worker in
                let start = b * block
                let n = Swift.min(block, count - start)
                let values = scratch.buffer(worker)
                dtype.decode(base + start * width, count: n, into: values)
                out[b] = summarise(values, n)
            }
        }
        fold(results.map { $0! })
        remaining -= count
    }
}
