#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
/// then the exact quantiles of `Selection` over the importances.
public struct ArceeFusionStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "arcee_fusion",
        summary: "Arcee Fusion: take the other model's values where |c − b| times the row's softmax KL is an upper outlier.",
        base: .required, inputs: 1...1, parameters: [])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    /// An element's importance, the same expression in every pass.
    @inline(__always)
    static func importance(_ c: Double, _ b: Double, _ kl: Double) -> Double { Swift.abs(c - b) * kl }

    /// The KL of a one-element row: p = q = 1 + 1e-8, so exactly 0 (NaN when c or b is not finite).
    @inline(__always)
    static func singleDivergence(_ c: Double, _ b: Double) -> Double { 0 * ((c - c) + (b - b)) }

    /// `Σ p log(p/q)` with `p = softmax(c) + 1e-8`, `q = softmax(b) + 1e-8` over one row (softmax
    /// with the row's maximum subtracted; sums in order).
    static func divergence(_ c: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ length: Int) -> Double {
        var mc = -Double.infinity, mb = -Double.infinity
        for j in 0..<length {
            if c[j].isNaN || c[j] > mc { mc = c[j] }
            if b[j].isNaN || b[j] > mb { mb = b[j] }
        }
        // Each exponential once, kept for the second loop.
        let ec = UnsafeMutablePointer<Double>.allocate(capacity: 2 * length), eb = ec + length
        defer { ec.deallocate() }
        var zc = 0.0, zb = 0.0
        for j in 0..<length {
            ec[j] = exp(c[j] - mc)
            eb[j] = exp(b[j] - mb)
            zc += ec[j]
            zb += eb[j]
        }
        var kl = 0.0
        for j in 0..<length {
            let p = ec[j] / zc + 1e-8
            let q = eb[j] / zb + 1e-8
            kl += p * log(p / q)
        }
        return kl
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let count = item.output.elementCount
        guard count > 0 else { return TensorMergeResult(method: "arcee_fusion") }
        let length = item.output.shape.last ?? 1
        let (kl, negatives) = try rowDivergences(item, length: length)
        /// The KL of each element's row over a block of `count` elements from C-order `start`.
        @Sendable func rowKL(_ c: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ start: Int, _ count: Int,
                             into out: UnsafeMutablePointer<Double>) {
            if length == 1 {
                for j in 0..<count { out[j] = Self.singleDivergence(c[j], b[j]) }
                return
            }
            var row = start / length, next = (row + 1) * length
            for j in 0..<count {
                if start + j == next {
                    row += 1
                    next += length
                }
                out[j] = kl[row]
            }
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
        /// The pass whose keys are `key(imp)` of every element.
        func importances(_ key: @escaping @Sendable (Double) -> Double) -> KeyPass {
            KeyPass(readers: readers, count: count, jobs: context.jobs, keys: { inputs, count, keys, start in
                let c = inputs[0], b = inputs[1]
                rowKL(c, b, start, count, into: keys)
                for j in 0..<count { keys[j] = key(Self.importance(c[j], b[j], keys[j])) }
            })
        }
        if !below.isEmpty {
            let pass = importances { $0 < 0 ? -$0 : .infinity }
            let ranks = try Selection.ranks([below.map { negatives - 1 - $0 }], of: pass)[0]
            for (position, rank) in zip(below, ranks) { values[position] = -rank.value }
        }
        if !above.isEmpty {
            let pass = importances { $0.isNaN ? .nan : ($0 > 0 ? $0 : 0) }
            let ranks = try Selection.ranks([above], of: pass)[0]
            for (position, rank) in zip(above, ranks) { values[position] = rank.value }
        }
        let q1 = values[positions[0]]!, median = values[positions[1]]!, q3 = values[positions[2]]!
        let threshold = median + 1.5 * (q3 - q1)

        // The writing pass.
        struct Block: Sendable { var kept = 0, moved = 0, nonFinite = false }
        var kept = 0, moved = 0, nonFinite = false
        try Lockstep.run(try readers(), jobs: context.jobs, output: output, positioned: { inputs, count, out, start in
            var block = Block()
            let c = inputs[0], b = inputs[1]
            rowKL(c, b, start, count, into: out)
            for j in 0..<count {
                let keep = Self.importance(c[j], b[j], out[j]) >= threshold
                let y = b[j] + (c[j] - b[j]) * (keep ? 1 : 0)
                out[j] = y
                if c[j] != b[j] {
                    block.moved += 1
                    if keep { block.kept += 1 }
                }
                if !y.isFinite { block.nonFinite = true }
            }
            return block
        }, fold: { blocks in
            for block in blocks {
                kept += block.kept
                moved += block.moved
                nonFinite = nonFinite || block.nonFinite
            }
        })
        let n = Double(count)
        return TensorMergeResult(method: "arcee_fusion", nonFinite: nonFinite,
                                 details: [("kept", .double(Double(kept) / n)), ("moved", .double(Double(moved) / n)),
                                           ("threshold", .double(threshold))])
    }

    /// The KL of every row (none when rows have one element: see `singleDivergence`) and how many
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
            let counts = BlockResults<Int>(count: tasks)
            let (cBuffer, bBuffer) = (values[0], values[1])
            parallelFor(tasks, jobs: context.jobs) { t, _ in
                let c = cBuffer.doubles(elements), b = bBuffer.doubles(elements), out = results.doubles(m)
                var below = 0
                for r in (t * taskRows)..<Swift.min(m, (t + 1) * taskRows) {
                    let first = r * length
                    let divergence = Self.divergence(c + first, b + first, length)
                    out[r] = divergence
                    for j in first..<(first + length) where Self.importance(c[j], b[j], divergence) < 0 { below += 1 }
                }
                counts.set(t, below)
            }
            let out = results.doubles(m)
            for r in 0..<m { kl[row + r] = out[r] }
            for below in counts.values { negatives += below }
            row += m
        }
        return (kl, negatives)
    }
}
