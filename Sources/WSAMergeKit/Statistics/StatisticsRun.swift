/// Measures a checkpoint's tensors, one at a time.
public enum StatisticsRun {
    public static func measure(_ checkpoint: Checkpoint, filter: TensorFilter, jobs: Int,
                               progress: Progress? = nil) throws -> [TensorStatistics] {
        let selected = checkpoint.tensors.indices.filter { filter.selects(checkpoint.tensors[$0].name) }
        progress?.start(tensors: selected.count, bytes: selected.reduce(0) { $0 + checkpoint.tensors[$1].byteCount })
        var result: [TensorStatistics] = []
        for i in selected {
            result.append(try TensorStatistics.compute(try checkpoint.reader(for: i), jobs: jobs))
            progress?.tensorDone(bytes: checkpoint.tensors[i].byteCount)
        }
        progress?.finish()
        return result
    }
}
