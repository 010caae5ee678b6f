import Dispatch

/// Measures a checkpoint's tensors.
public enum StatisticsRun {
    /// Statistics of every tensor `filter` selects, in storage order.
    ///
    /// With several `jobs`, whole tensors are measured side by side, largest first, each on one
    /// thread (see `parallelMap`); `.npz` members are read one at a time, libzip archives not
    /// being thread-safe.
    public static func measure(_ checkpoint: Checkpoint, filter: TensorFilter, jobs: Int,
                               progress: Progress? = nil) throws -> [TensorStatistics] {
        let selected = checkpoint.tensors.indices.filter { filter.selects(checkpoint.tensors[$0].name) }
        progress?.start(tensors: selected.count, bytes: selected.reduce(0) { $0 + checkpoint.tensors[$1].byteCount })
        defer { progress?.finish() }
        guard checkpoint.format != .npz, jobs > 1 else {
            return try selected.map { i in
                defer { progress?.tensorDone(bytes: checkpoint.tensors[i].byteCount) }
                return try TensorStatistics.compute(try checkpoint.reader(for: i), jobs: jobs)
            }
        }
        let bytes = selected.map { checkpoint.tensors[$0].byteCount }
        let lock = DispatchSemaphore(value: 1)
        return try parallelMap(selected.count, jobs: jobs, order: bytes.indices.sorted { bytes[$0] > bytes[$1] }) { k in
            let statistics = try TensorStatistics.compute(try checkpoint.reader(for: selected[k]), jobs: 1)
            lock.wait()
            progress?.tensorDone(bytes: bytes[k])
            lock.signal()
            return statistics
        }
    }
}
