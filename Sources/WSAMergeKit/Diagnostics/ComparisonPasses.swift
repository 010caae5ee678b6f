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
    /// model j stores the reference's dtype (then `changed` compares bit patterns).
    static func block(_ inputs: [UnsafeMutablePointer<Double>], count: Int, sameDType: [Bool]) -> DifferenceSums {
        var sums = DifferenceSums(models: inputs.count)
        sums.count = count
        let a = inputs[0]
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
            sums.changed[j - 1] = changed
            sums.ambiguous[j - 1] = ambiguous
        }
        for k in inputs.indices { sums.scopes[k] = ScopeMoments(values: inputs[k], count: count) }
        let m = inputs.count - 1
        var aa = 0.0, nonfinite = 0
        var xx = [Double](repeating: 0, count: m), ax = xx, dd = xx
        var largest = [Double](repeating: -.infinity, count: m)
        for e in 0..<count {
            var finite = a[e].isFinite
            for j in 1..<inputs.count where !inputs[j][e].isFinite { finite = false }
            guard finite else {
                nonfinite += 1
                continue
            }
            let av = a[e]
            aa += av * av
            for j in 0..<m {
                let x = inputs[j + 1][e]
                let d = x - av
                xx[j] += x * x
                ax[j] += av * x
                dd[j] += d * d
                largest[j] = Swift.max(largest[j], d.magnitude)
            }
        }
        sums.nonfinite = nonfinite
        sums.referenceSquares = aa
        sums.squares = xx
        sums.dots = ax
        sums.differenceSquares = dd
        sums.maxAbs = largest
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

    /// The selection key of input i at one element: |x_i − b|, or 0 where either is not finite.
    /// The selection passes and the membership pass must compute it identically.
    @inline(__always)
    static func key(_ b: Double, _ x: Double) -> Double {
        b.isFinite && x.isFinite ? (x - b).magnitude : 0
    }

    /// Measures one tensor: per input, the exact top-k selection of |δ_i| (k = max(1, ⌊density·N⌋),
    /// ties earliest in C order, as the magnitude sparsifier selects), then one pass over the base
    /// and every input for the sums and the memberships. `reader(0)` opens a fresh reader of the
    /// base, `reader(i)` of input i (1…n).
    static func measure(inputs n: Int, reader: @escaping @Sendable (Int) throws -> TensorReader, count: Int, density: Double,
                        jobs: Int) throws -> TaskVectorSums {
        var windows: [RankWindow] = []
        if count > 0 {
            let k = Swift.max(1, Int((density * Double(count)).rounded(.down)))
            for i in 1...n {
                let pass = KeyPass(readers: { [try reader(0), try reader(i)] }, count: count, jobs: jobs,
                                   keys: { inputs, count, keys, _ in
                                       for e in 0..<count { keys[e] = key(inputs[0][e], inputs[1][e]) }
                                   })
                var window = try RankWindow.largest(k, of: pass)
                if window.needsCensus { _ = try window.census(pass) }
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

    static func block(_ inputs: [UnsafeMutablePointer<Double>], count: Int, windows: [RankWindow], position: Int) -> TaskVectorSums {
        let n = inputs.count - 1
        var sums = TaskVectorSums(inputs: n)
        sums.count = count
        var cursors = windows.map { $0.cursor(at: position) }
        var delta = [Double](repeating: 0, count: n)
        var member = [Bool](repeating: false, count: n)
        let b = inputs[0]
        for e in 0..<count {
            var finite = b[e].isFinite
            for i in 0..<n {
                let x = inputs[i + 1][e]
                if !x.isFinite { finite = false }
                // Every cursor sees every key in C order, whatever the element.
                member[i] = cursors[i].keeps(key(b[e], x))
            }
            guard finite else {
                sums.nonfinite += 1
                continue
            }
            sums.baseSquares += b[e] * b[e]
            var positive = false, negative = false
            for i in 0..<n {
                let d = inputs[i + 1][e] - b[e]
                delta[i] = d
                if d > 0 { positive = true } else if d < 0 { negative = true }
                member[i] = member[i] && d != 0
                if member[i] { sums.members[i] += 1 }
            }
            if positive && negative { sums.conflicts += 1 }
            for i in 0..<n {
                sums.gram[i * n + i] += delta[i] * delta[i]
                for j in (i + 1)..<Swift.max(i + 1, n) {
                    sums.gram[i * n + j] += delta[i] * delta[j]
                    if member[i] && member[j] { sums.intersections[i * n + j] += 1 }
                }
            }
        }
        return sums
    }
}
