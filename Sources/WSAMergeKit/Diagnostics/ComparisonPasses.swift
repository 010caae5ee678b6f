/// The streamed passes of `compare`: raw float64 sums per tensor, from which every reported
/// quantity is derived (and which pool exactly over the tensors of a layer). Each pass folds its
/// per-block sums in block order, so the sums are the same bits for every `jobs`.
///
/// An element counts in the sums only when every value the quantity involves (each model's,
/// and the base's) is finite there; the others are counted in `nonfinite`. `changed` looks at
/// every element.

/// Sums of models `X_1 … X_m` against the reference `A` (no base).
struct DifferenceSums: Sendable {
    var count = 0
    /// Elements where some model holds NaN or ±∞.
    var nonfinite = 0
    /// Σ a² over the jointly finite elements.
    var referenceSquares = 0.0
    /// Per compared model j (1…m): Σ x², Σ a·x, Σ (x − a)², max |x − a|, elements whose stored
    /// bytes differ.
    var squares: [Double]
    var dots: [Double]
    var differenceSquares: [Double]
    var maxAbs: [Double]
    var changed: [Int]
    /// Same-dtype elements that decode to the same NaN: their bytes may still differ (NaN
    /// payloads, signalling NaNs), so a tensor with some is compared byte by byte.
    var ambiguous: [Int]
    /// Every model's mean and std (the reference first), over its own finite values.
    var scopes: [ScopeMoments]

    init(models: Int) {
        let m = models - 1
        squares = [Double](repeating: 0, count: m)
        dots = squares
        differenceSquares = squares
        maxAbs = [Double](repeating: -.infinity, count: m)
        changed = [Int](repeating: 0, count: m)
        ambiguous = changed
        scopes = [ScopeMoments](repeating: ScopeMoments(), count: models)
    }

    /// Folds `other` in (a later block, or another tensor of a pooled layer).
    mutating func add(_ other: DifferenceSums) {
        count += other.count
        nonfinite += other.nonfinite
        referenceSquares += other.referenceSquares
        for j in squares.indices {
            squares[j] += other.squares[j]
            dots[j] += other.dots[j]
            differenceSquares[j] += other.differenceSquares[j]
            maxAbs[j] = Swift.max(maxAbs[j], other.maxAbs[j])
            changed[j] += other.changed[j]
            ambiguous[j] += other.ambiguous[j]
        }
        for k in scopes.indices { scopes[k].combine(other.scopes[k]) }
    }

    /// One block: `inputs[0]` the reference, `inputs[j]` model j; `sameDType[j - 1]` whether
    /// model j stores the reference's dtype (then `changed` compares bit patterns). Each sum runs
    /// over the block's elements in order, skipping the non-finite ones.
    static func block(_ inputs: [UnsafeMutablePointer<Double>], count: Int, sameDType: [Bool]) -> DifferenceSums {
        var sums = DifferenceSums(models: inputs.count)
        sums.count = count
        let a = inputs[0]
        for k in inputs.indices { sums.scopes[k] = ScopeMoments(values: inputs[k], count: count) }
        // Which elements count: nil when all of them do.
        var finite: [Bool]?
        if inputs.contains(where: { containsNonFinite($0, count) }) {
            let mask = (0..<count).map { e in inputs.allSatisfy { $0[e].isFinite } }
            sums.nonfinite = mask.lazy.filter { !$0 }.count
            finite = mask
        }
        var aa = 0.0
        if let finite {
            for e in 0..<count where finite[e] { aa += a[e] * a[e] }
        } else {
            for e in 0..<count { aa += a[e] * a[e] }
        }
        sums.referenceSquares = aa
        for j in 1..<inputs.count {
            let x = inputs[j]
            var changed = 0, ambiguous = 0
            if sameDType[j - 1] {
                for e in 0..<count where a[e].bitPattern != x[e].bitPattern || a[e].isNaN {
                    if a[e].bitPattern != x[e].bitPattern { changed += 1 } else { ambiguous += 1 }
                }
            } else {
                for e in 0..<count where !(a[e] == x[e] || (a[e].isNaN && x[e].isNaN)) { changed += 1 }
            }
            var xx = 0.0, ax = 0.0, dd = 0.0, largest = -Double.infinity
            @inline(__always) func add(_ e: Int) {
                let av = a[e], xv = x[e], d = xv - av
                xx += xv * xv
                ax += av * xv
                dd += d * d
                largest = Swift.max(largest, d.magnitude)
            }
            if let finite {
                for e in 0..<count where finite[e] { add(e) }
            } else {
                for e in 0..<count { add(e) }
            }
            sums.changed[j - 1] = changed
            sums.ambiguous[j - 1] = ambiguous
            sums.squares[j - 1] = xx
            sums.dots[j - 1] = ax
            sums.differenceSquares[j - 1] = dd
            sums.maxAbs[j - 1] = largest
        }
        return sums
    }

    /// Measures one tensor of every model (`readers[0]` the reference), reading each once;
    /// a pair with ambiguous NaNs is then compared byte by byte (`fresh(j)` re-opens model j).
    static func measure(_ readers: [TensorReader], jobs: Int,
                        fresh: (Int) throws -> TensorReader) throws -> DifferenceSums {
        let dtypes = readers.map(\.tensor.dtype)
        let sameDType = dtypes.dropFirst().map { $0 == dtypes[0] }
        var total = DifferenceSums(models: readers.count)
        try Lockstep.run(readers, jobs: jobs, output: nil, kernel: { inputs, count, _ in
            DifferenceSums.block(inputs, count: count, sameDType: sameDType)
        }, fold: { blocks in
            for block in blocks { total.add(block) }
        })
        for j in total.ambiguous.indices where total.ambiguous[j] > 0 {
            total.changed[j] = try differingElements(try fresh(0), try fresh(j + 1))
            total.ambiguous[j] = 0
        }
        return total
    }

    /// The number of elements whose stored bytes differ, for two tensors of one dtype.
    static func differingElements(_ a: TensorReader, _ b: TensorReader) throws -> Int {
        let width = a.tensor.dtype.byteWidth!
        let total = a.tensor.elementCount
        let chunk = 1 << 16
        var left = [UInt8](repeating: 0, count: chunk * width), right = left
        var done = 0, differing = 0
        while done < total {
            let m = Swift.min(chunk, total - done)
            try left.withUnsafeMutableBytes { try a.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<m * width])) }
            try right.withUnsafeMutableBytes { try b.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<m * width])) }
            for e in 0..<m where left[e * width..<(e + 1) * width] != right[e * width..<(e + 1) * width] { differing += 1 }
            done += m
        }
        return differing
    }
}

/// Sums of the task vectors δ_i = x_i − b of inputs `1 … n` over a base.
struct TaskVectorSums: Sendable {
    var count = 0
    /// Elements where the base or some input holds NaN or ±∞.
    var nonfinite = 0
    /// Σ b².
    var baseSquares = 0.0
    /// Σ δ_i δ_j, row-major n × n (upper triangle and diagonal filled).
    var gram: [Double]
    /// Elements whose nonzero δ_i do not all share one sign.
    var conflicts = 0
    /// |S_i|: elements in input i's top-magnitude set (nonzero δ_i, jointly finite).
    var members: [Int]
    /// |S_i ∩ S_j|, row-major n × n (upper triangle).
    var intersections: [Int]

    init(inputs n: Int) {
        gram = [Double](repeating: 0, count: n * n)
        members = [Int](repeating: 0, count: n)
        intersections = [Int](repeating: 0, count: n * n)
    }

    var inputs: Int { members.count }

    mutating func add(_ other: TaskVectorSums) {
        count += other.count
        nonfinite += other.nonfinite
        baseSquares += other.baseSquares
        for k in gram.indices {
            gram[k] += other.gram[k]
            intersections[k] += other.intersections[k]
        }
        for i in members.indices { members[i] += other.members[i] }
        conflicts += other.conflicts
    }

    /// The selection key of input i at one element: |x_i − b| where every input and the base are
    /// finite (`finite`), else 0, so an element that is left out of every sum is never in a top
    /// set either. The selection passes and the membership pass must compute it identically.
    @inline(__always)
    static func key(_ b: Double, _ x: Double, finite: Bool) -> Double {
        finite ? (x - b).magnitude : 0
    }

    /// Whether element e of every input (the base included) is finite.
    @inline(__always)
    static func jointlyFinite(_ inputs: [UnsafeMutablePointer<Double>], _ e: Int) -> Bool {
        inputs.allSatisfy { $0[e].isFinite }
    }

    /// Measures one tensor: per input, the exact top-k selection of |δ_i| (k = max(1, ⌊density·N⌋),
    /// ties earliest in C order, as the magnitude sparsifier selects), then one pass over the base
    /// and every input for the sums and the memberships. `reader(0)` opens a fresh reader of the
    /// base, `reader(i)` of input i (1…n).
    static func measure(inputs n: Int, reader: @escaping @Sendable (Int) throws -> TensorReader, count: Int, density: Double,
                        jobs: Int) throws -> TaskVectorSums {
        var windows: [RankWindow] = []
        if count > 0 {
            // Every input's selection in one pass over the base and the inputs (a key stream each).
            let k = Swift.max(1, Int((density * Double(count)).rounded(.down)))
            let pass = KeyPass(readers: { try (0...n).map(reader) }, count: count, streams: n, jobs: jobs,
                               keys: { inputs, count, keys, _ in
                                   let anyNonFinite = inputs.contains { containsNonFinite($0, count) }
                                   for i in 0..<n {
                                       for e in 0..<count {
                                           keys[i][e] = key(inputs[0][e], inputs[i + 1][e], finite: !anyNonFinite || jointlyFinite(inputs, e))
                                       }
                                   }
                               })
            let cuts = k < count ? try Selection.ranks([[Int]](repeating: [count - k], count: n), of: pass) : []
            for i in 0..<n {
                var window = RankWindow.largest(k, count: count, cut: cuts[i][0])
                if window.needsCensus { _ = try window.census(pass, stream: i) }
                windows.append(window)
            }
        }
        let selected = windows
        var total = TaskVectorSums(inputs: n)
        try Lockstep.run(try (0...n).map(reader), jobs: jobs, output: nil, positioned: { inputs, count, _, position in
            block(inputs, count: count, windows: selected, position: position)
        }, fold: { blocks in
            for block in blocks { total.add(block) }
        })
        return total
    }

    /// One block starting at C-order `position`: each input's memberships (its cursor sees every
    /// key in order), then each sum over the block's jointly finite elements in order.
    static func block(_ inputs: [UnsafeMutablePointer<Double>], count: Int, windows: [RankWindow], position: Int) -> TaskVectorSums {
        let n = inputs.count - 1
        var sums = TaskVectorSums(inputs: n)
        sums.count = count
        let b = inputs[0]
        var finite = [Bool](repeating: true, count: count)
        if inputs.contains(where: { containsNonFinite($0, count) }) {
            for e in 0..<count { finite[e] = jointlyFinite(inputs, e) }
            sums.nonfinite = finite.lazy.filter { !$0 }.count
        }
        // Per input: δ (0 where not jointly finite) and membership (1 when in the top set).
        withUnsafeTemporaryAllocation(of: Double.self, capacity: n * count) { deltas in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: n * count) { members in
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: count) { signs in
                    signs.initialize(repeating: 0)
                    for i in 0..<n {
                        let x = inputs[i + 1]
                        let delta = deltas.baseAddress! + i * count, member = members.baseAddress! + i * count
                        var cursor = windows[i].cursor(at: position)
                        var kept = 0
                        for e in 0..<count {
                            let d = finite[e] ? x[e] - b[e] : 0
                            // Every key goes through the cursor, in C order.
                            let inSet: UInt8 = cursor.keeps(key(b[e], x[e], finite: finite[e])) && d != 0 ? 1 : 0
                            delta[e] = d
                            member[e] = inSet
                            kept += Int(inSet)
                            signs[e] |= (d > 0 ? 1 : 0) | (d < 0 ? 2 : 0)
                        }
                        sums.members[i] = kept
                    }
                    var conflicts = 0
                    for e in 0..<count where signs[e] == 3 { conflicts += 1 }
                    sums.conflicts = conflicts
                }
                for i in 0..<n {
                    for j in i..<n {
                        let p = deltas.baseAddress! + i * count, q = deltas.baseAddress! + j * count
                        var g = 0.0
                        for e in 0..<count { g += p[e] * q[e] }
                        sums.gram[i * n + j] = g
                        guard j > i else { continue }
                        let u = members.baseAddress! + i * count, v = members.baseAddress! + j * count
                        var both = 0
                        for e in 0..<count { both += Int(u[e] & v[e]) }
                        sums.intersections[i * n + j] = both
                    }
                }
            }
        }
        var bb = 0.0
        for e in 0..<count where finite[e] { bb += b[e] * b[e] }
        sums.baseSquares = bb
        return sums
    }
}
