/// Measures a checkpoint's tensors.
public enum StatisticsRun {
    /// Statistics of every tensor `filter` selects, in storage order; whole tensors are measured
    /// side by side (see `parallelMap`).
    public static func measure(_ checkpoint: Checkpoint, filter: TensorFilter, jobs: Int,
                               progress: Progress? = nil) throws -> [TensorStatistics] {
        let selected = checkpoint.tensors.indices.filter { filter.selects(checkpoint.tensors[$0].name) }
        let bytes = selected.map { checkpoint.tensors[$0].byteCount }
        progress?.start(tensors: selected.count, bytes: bytes.reduce(0, +))
        defer { progress?.finish() }
        return try parallelMap(sizes: bytes, jobs: jobs, serial: !checkpoint.readsTensorsInParallel) { k, jobs in
            let statistics = try TensorStatistics.compute(try checkpoint.readerInAnyOrder(for: selected[k]), jobs: jobs)
            progress?.tensorDone(bytes: bytes[k])
            return statistics
        }
    }
}
