import CKernels

/// Arcee Fusion (mergekit's `arcee_fusion`): take the other model's value only where it differs
/// from the base most, per tensor with the base `b` and the other model `c`:
/// ```
/// per row (last axis; a 1-D tensor is one row):
///     p = softmax(c) + 1e-8,  q = softmax(b) + 1e-8,  KL_row = Σ p log(p/q)
/// imp = |c − b| · KL_row
/// q1, median, q3 = sorted imp at ⌊q·(N − 1)⌋ for q = 0.25, 0.5, 0.75 (exact, any size)
/// out = b + (c − b)·[imp ≥ median + 1.5 (q3 − q1)]
/// ```
/// Read-only passes: the rows' KL (a group of whole rows at a time; one double kept per row),
/// then the exact quantiles of `Selection` over the importances. The per-element work is in C
/// (`wsk_row_divergence`, `wsk_arcee_keys`, `wsk_arcee_merge`).
public struct ArceeFusionStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "arcee_fusion",
        summary: "Arcee Fusion: take the other model's values where |c − b| times the row's softmax KL is an upper outlier.",
        base: .required, inputs: 1...1, parameters: [])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let count = item.output.elementCount
        guard count > 0 else { return TensorMergeResult(method: "arcee_fusion") }
        let length = item.output.shape.last ?? 1
        let (kl, negatives) = try rowDivergences(item, length: length)
        /// Runs `body` with the rows' KLs for the C kernels (nil for rows of one element).
        @Sendable func withKL<T>(_ body: (UnsafePointer<Double>?) -> T) -> T {
            length == 1 ? body(nil) : kl.withUnsafeBufferPointer { body($0.baseAddress) }
        }

        // The quantiles of imp, exact. Selection orders non-negative keys; a row's KL can round to
        // slightly below 0, so the negative importances (counted with the KLs) are ranked apart.
        let context = self.context
        let readers: @Sendable () throws -> [TensorReader] = { try context.readers(item) + [try context.baseReader(item)] }
        // The three positions, those among the negative importances and the others each found
        // in one selection pass.
        let positions = [0.25, 0.5, 0.75].map { Int($0 * Double(count - 1)) }
        var values: [Int: Double] = [:]
        let below = positions.filter { $0 < negatives }, above = positions.filter { $0 >= negatives }
        /// The pass whose keys are the importances below 0, negated (`negative`; the others +∞),
        /// or those not below 0.
        func importances(negative: Bool) -> KeyPass {
            KeyPass(readers: readers, count: count, jobs: context.jobs, keys: { inputs, count, keys, start in
                withKL { wsk_arcee_keys(inputs[0], inputs[1], count, $0, length, Int64(start), negative ? 1 : 0, keys) }
            })
        }
        if !below.isEmpty {
            let ranks = try Selection.ranks([below.map { negatives - 1 - $0 }], of: importances(negative: true))[0]
            for (position, rank) in zip(below, ranks) { values[position] = -rank.value }
        }
        if !above.isEmpty {
            let ranks = try Selection.ranks([above], of: importances(negative: false))[0]
            for (position, rank) in zip(above, ranks) { values[position] = rank.value }
        }
        let q1 = values[positions[0]]!, median = values[positions[1]]!, q3 = values[positions[2]]!
        let threshold = median + 1.5 * (q3 - q1)

        // The writing pass.
        struct Block: Sendable { var counts: [Int64] = [0, 0]; var nonFinite = false }
        var kept = 0, moved = 0, nonFinite = false
        try Lockstep.run(try readers(), jobs: context.jobs, output: output, positioned: { inputs, count, out, start in
            var block = Block()
            block.nonFinite = withKL { wsk_arcee_merge(inputs[0], inputs[1], count, $0, length, Int64(start), threshold, out, &block.counts) } != 0
            return block
        }, fold: { blocks in
            for block in blocks {
                moved += Int(block.counts[0])
                kept += Int(block.counts[1])
                nonFinite = nonFinite || block.nonFinite
            }
        })
        let n = Double(count)
        return TensorMergeResult(method: "arcee_fusion", nonFinite: nonFinite,
                                 details: [("kept", .double(Double(kept) / n)), ("moved", .double(Double(moved) / n)),
                                           ("threshold", .double(threshold))])
    }

    /// The KL of every row (none when rows have one element: see `wsk_arcee_keys`) and how many
    /// importances are below 0, reading groups of whole rows and working the rows side by side.
    func rowDivergences(_ item: MergePlan.Item, length: Int) throws -> (kl: [Double], negatives: Int) {
        let count = item.output.elementCount
        guard length > 1 else {
            // imp = |c − b|·(±0 or NaN) is never below 0.
            return ([], 0)
        }
        let rows = count / length
        let readers = try context.readers(item) + [try context.baseReader(item)]
        let groupRows = Swift.max(1, Swift.min(rows, Partition.chunkElements / length))
        let raw = readers.map { RawBuffer(byteCount: groupRows * length * ($0.tensor.dtype.byteWidth ?? 1)) }
        let values = readers.map { _ in RawBuffer(byteCount: groupRows * length * 8) }
        let results = RawBuffer(byteCount: groupRows * 8)
        // Rows per task: about a block's worth of elements.
        let taskRows = Swift.max(1, Partition.blockElements / length)
        var kl = [Double](repeating: 0, count: rows)
        var negatives = 0
        var row = 0
        while row < rows {
            let m = Swift.min(groupRows, rows - row), elements = m * length
            try Lockstep.readDecoded(readers, count: elements, raw: raw, into: values, jobs: context.jobs)
            let tasks = (m + taskRows - 1) / taskRows
            let counts = BlockResults<Int64>(count: tasks)
            let (cBuffer, bBuffer) = (values[0], values[1])
            parallelFor(tasks, jobs: context.jobs) { t, _ in
                let c = cBuffer.doubles(elements), b = bBuffer.doubles(elements), out = results.doubles(m)
                let scratch = UnsafeMutablePointer<Double>.allocate(capacity: 2 * length)
                defer { scratch.deallocate() }
                var below: Int64 = 0
                for r in (t * taskRows)..<Swift.min(m, (t + 1) * taskRows) {
                    out[r] = wsk_row_divergence(c + r * length, b + r * length, length, scratch, &below)
                }
                counts.set(t, below)
            }
            let out = results.doubles(m)
            for r in 0..<m { kl[row + r] = out[r] }
            for below in counts.values { negatives += Int(below) }
            row += m
        }
        return (kl, negatives)
    }
}
