/// A read-only pass that turns same-shaped tensors into one non-negative key per element
/// (e.g. `|x − b|`), streamed like every pass: several passes can be made over it.
public struct KeyPass: Sendable {
    /// Fresh readers of the tensors each pass reads.
    let readers: @Sendable () throws -> [TensorReader]
    /// Elements per tensor.
    let count: Int
    let jobs: Int
    /// Writes the keys of a block: `keys[j] = f(inputs[0][j], inputs[1][j], …)`, for the block
    /// starting at C-order `position`.
    let keys: @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ keys: UnsafeMutablePointer<Double>,
                         _ position: Int) -> Void

    /// Runs one pass: `block(keys, count, position)` per block, results folded in block order.
    func run<T: Sendable>(_ block: @escaping @Sendable (_ keys: UnsafePointer<Double>, _ count: Int, _ position: Int) -> T,
                          fold: ([T]) throws -> Void) throws {
        let keys = self.keys
        try Lockstep.run(try readers(), jobs: jobs, output: nil, positioned: { inputs, count, scratch, position in
            keys(inputs, count, scratch, position)
            return block(scratch, count, position)
        }, fold: fold)
    }
}

/// Exact order statistics of a key pass in bounded memory: radix narrowing on the float64 bit
/// pattern (non-negative doubles order like their bits), 16 bits a pass, until the candidates
/// fit in `limit` elements, which are then selected in memory. Small tensors take one pass.
public enum Selection {
    /// The key at one ascending position, with how many keys are below it and equal to it.
    public struct Rank: Sendable, Equatable {
        public let value: Double
        public let less: Int
        public let equal: Int
        /// How many keys equal to `value` precede each block (`Partition.blockElements`), when
        /// the selection saw them in C order (it does unless 64 bits of radix passes found it).
        public var equalBefore: [Int]? = nil
    }

    /// Candidates held in memory at most (8 bytes each).
    public static let defaultLimit = 1 << 22

    #if DEBUG
    /// Tests lower the limit to run the radix passes on small tensors.
    @TaskLocal static var limitOverride: Int?
    #endif

    static var limit: Int {
        #if DEBUG
        if let limitOverride { return limitOverride }
        #endif
        return defaultLimit
    }

    /// The key at ascending position `position` (0-based; ties in any order) of `pass`.
    ///
    /// - Complexity: one pass when the tensor has at most `limit` elements, else one pass per
    ///   16 bits narrowed plus one, each reading the tensors once.
    static func rank(at position: Int, of pass: KeyPass) throws -> Rank {
        precondition(position >= 0 && position < pass.count)
        let limit = Self.limit
        var prefix: UInt64 = 0
        var prefixBits = 0
        var below = 0
        var candidates = pass.count
        while true {
            let shift = UInt64(64 - prefixBits)
            let (matchPrefix, bits) = (prefix, prefixBits)
            @Sendable func matches(_ key: UInt64) -> Bool { bits == 0 || key >> shift == matchPrefix }
            if candidates <= limit {
                // The candidates in C order, and how many each block holds.
                var held: [UInt64] = []
                var perBlock: [Int] = []
                held.reserveCapacity(candidates)
                try pass.run({ keys, count, _ in
                    var part: [UInt64] = []
                    for j in 0..<count where matches(keys[j].bitPattern) { part.append(keys[j].bitPattern) }
                    return part
                }, fold: { blocks in
                    for part in blocks {
                        held += part
                        perBlock.append(part.count)
                    }
                })
                let target = position - below
                var scratch = held
                let value = quickselect(&scratch, target)
                var less = below, equal = 0
                var equalBefore = [0]
                equalBefore.reserveCapacity(perBlock.count + 1)
                var offset = 0
                for count in perBlock {
                    for key in held[offset..<(offset + count)] {
                        if key < value { less += 1 } else if key == value { equal += 1 }
                    }
                    offset += count
                    equalBefore.append(equal)
                }
                return Rank(value: Double(bitPattern: value), less: less, equal: equal, equalBefore: equalBefore)
            }
            let digitShift = UInt64(48 - prefixBits)
            var histogram = [Int](repeating: 0, count: 1 << 16)
            try pass.run({ keys, count, _ in
                var digits: [UInt16] = []
                for j in 0..<count where matches(keys[j].bitPattern) {
                    digits.append(UInt16(truncatingIfNeeded: keys[j].bitPattern >> digitShift))
                }
                return digits
            }, fold: { blocks in for digits in blocks { for d in digits { histogram[Int(d)] += 1 } } })
            var digit = 0
            while below + histogram[digit] <= position {
                below += histogram[digit]
                digit += 1
            }
            prefix = prefix << 16 | UInt64(digit)
            prefixBits += 16
            candidates = histogram[digit]
            if prefixBits == 64 {
                return Rank(value: Double(bitPattern: prefix), less: below, equal: candidates)
            }
        }
    }

    /// Moves the element of ascending rank `k` to `values[k]` and returns it (Hoare's
    /// selection with a median-of-three pivot; deterministic).
    static func quickselect(_ values: inout [UInt64], _ k: Int) -> UInt64 {
        var lo = 0, hi = values.count - 1
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            let pivot = Swift.max(Swift.min(values[lo], values[mid]), Swift.min(Swift.max(values[lo], values[mid]), values[hi]))
            var i = lo, j = hi
            while i <= j {
                while values[i] < pivot { i += 1 }
                while values[j] > pivot { j -= 1 }
                if i <= j {
                    values.swapAt(i, j)
                    i += 1
                    j -= 1
                }
            }
            if k <= j { hi = j } else if k >= i { lo = i } else { return values[k] }
        }
        return values[k]
    }
}

/// Which elements of a key pass a sparsifier keeps, by rank: every key strictly between
/// `lower` and `upper`, and of the keys equal to a band's value, those whose rank among them
/// (in C order) falls in the band's range.
struct RankWindow: Sendable {
    struct Band: Sendable {
        let value: Double
        let ranks: Range<Int>
        /// How many keys equal to `value` precede each block (`Partition.blockElements`).
        var before: [Int] = []
    }

    var lower: Double
    var upper: Double
    var bands: [Band]

    /// Keeps everything.
    static let all = RankWindow(lower: -.infinity, upper: .infinity, bands: [])
    /// Keeps nothing.
    static let none = RankWindow(lower: .infinity, upper: .infinity, bands: [])

    /// The `k` largest keys; of equal keys at the cut-off, the earliest in C order.
    static func largest(_ k: Int, of pass: KeyPass) throws -> RankWindow {
        guard k < pass.count else { return .all }
        guard k > 0 else { return .none }
        let cut = try Selection.rank(at: pass.count - k, of: pass)
        let above = pass.count - cut.less - cut.equal
        return RankWindow(lower: cut.value, upper: .infinity,
                          bands: [Band(value: cut.value, ranks: 0..<(k - above), before: cut.equalBefore ?? [])])
    }

    /// Ascending positions `from ..< to` of a stable ascending sort (equal keys in C order).
    static func positions(_ from: Int, _ to: Int, of pass: KeyPass) throws -> RankWindow {
        guard from < to else { return .none }
        let low = try Selection.rank(at: from, of: pass)
        let high = try Selection.rank(at: to - 1, of: pass)
        if low.value == high.value {
            return RankWindow(lower: low.value, upper: low.value,
                              bands: [Band(value: low.value, ranks: (from - low.less)..<(to - low.less), before: low.equalBefore ?? [])])
        }
        return RankWindow(lower: low.value, upper: high.value,
                          bands: [Band(value: low.value, ranks: (from - low.less)..<low.equal, before: low.equalBefore ?? []),
                                  Band(value: high.value, ranks: 0..<(to - high.less), before: high.equalBefore ?? [])])
    }

    /// Whether the window needs a census pass for tie ranks: a band keeps some of its keys and
    /// the selection did not already count them block by block.
    var needsCensus: Bool { bands.contains { $0.ranks.count > 0 && $0.before.isEmpty } }

    /// Counts, in one pass, the keys equal to each band's value before every block, and sums
    /// `‖keys‖₁` and the kept keys (in block order, so the sums do not depend on `--jobs`).
    mutating func census(_ pass: KeyPass) throws -> (total: Double, kept: Double, keptCount: Int) {
        let values = bands.map(\.value), lower = lower, upper = upper
        struct Block: Sendable { var equal: [Int]; var total: Double; var strict: Double; var strictCount: Int }
        var before = [[Int]](repeating: [0], count: bands.count)
        var total = 0.0, strict = 0.0, strictCount = 0
        try pass.run({ keys, count, _ in
            var block = Block(equal: [Int](repeating: 0, count: values.count), total: 0, strict: 0, strictCount: 0)
            for j in 0..<count {
                let key = keys[j]
                block.total += key
                if lower < key && (key < upper || upper == .infinity) {
                    block.strict += key
                    block.strictCount += 1
                }
                for (b, value) in values.enumerated() where key == value { block.equal[b] += 1 }
            }
            return block
        }, fold: { blocks in
            for block in blocks {
                total += block.total
                strict += block.strict
                strictCount += block.strictCount
                for b in values.indices { before[b].append(before[b].last! + block.equal[b]) }
            }
        })
        var kept = strict, keptCount = strictCount
        for b in bands.indices {
            bands[b].before = before[b]
            let equal = before[b].last!
            let keptTies = Swift.max(0, Swift.min(bands[b].ranks.upperBound, equal) - Swift.max(bands[b].ranks.lowerBound, 0))
            kept += Double(keptTies) * bands[b].value
            keptCount += keptTies
        }
        return (total, kept, keptCount)
    }

    /// A per-block cursor that answers "is the key at this position kept?" in C order.
    func cursor(at position: Int) -> Cursor {
        let seen = bands.map { $0.before.isEmpty ? 0 : $0.before[position / Partition.blockElements] }
        return Cursor(lower: lower, upper: upper, bandCount: bands.count,
                      value0: bands.first?.value ?? .nan, ranks0: bands.first?.ranks ?? 0..<0, seen0: seen.first ?? 0,
                      value1: bands.count > 1 ? bands[1].value : .nan, ranks1: bands.count > 1 ? bands[1].ranks : 0..<0,
                      seen1: seen.count > 1 ? seen[1] : 0)
    }

    /// The window's bounds and its (at most two) bands in plain fields, for the per-element loop.
    struct Cursor {
        let lower: Double, upper: Double
        let bandCount: Int
        let value0: Double, ranks0: Range<Int>
        var seen0: Int
        let value1: Double, ranks1: Range<Int>
        var seen1: Int

        /// Whether the next key (in C order) is kept.
        @inline(__always)
        mutating func keeps(_ key: Double) -> Bool {
            var kept = lower < key && (key < upper || upper == .infinity)
            if bandCount > 0 && key == value0 {
                if ranks0.contains(seen0) { kept = true }
                seen0 += 1
            }
            if bandCount > 1 && key == value1 {
                if ranks1.contains(seen1) { kept = true }
                seen1 += 1
            }
            return kept
        }
    }
}
