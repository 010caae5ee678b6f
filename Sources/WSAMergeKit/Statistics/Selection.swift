import CKernels

/// A read-only pass that turns same-shaped tensors into one or more non-negative keys per
/// element (e.g. `|x_k − b|` for every input k: one key stream per input), streamed like every
/// pass: several passes can be made over it.
public struct KeyPass: Sendable {
    /// Fresh readers of the tensors each pass reads.
    let readers: @Sendable () throws -> [TensorReader]
    /// Elements per tensor.
    let count: Int
    /// Keys per element.
    let streams: Int
    let jobs: Int
    /// Writes the keys of a block: `keys[s][j] = f_s(inputs[0][j], inputs[1][j], …)`, for the
    /// block starting at C-order `position`.
    let keys: @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ keys: [UnsafeMutablePointer<Double>],
                         _ position: Int) -> Void
    /// Whether the keys are `|inputs[s] − inputs[streams]|` (task vectors against the last
    /// tensor), which scans may compute from the stored elements in place.
    let differences: Bool

    /// A pass with `streams` keys per element.
    init(readers: @escaping @Sendable () throws -> [TensorReader], count: Int, streams: Int, jobs: Int,
         keys: @escaping @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ keys: [UnsafeMutablePointer<Double>],
                                    _ position: Int) -> Void) {
        self.readers = readers
        self.count = count
        self.streams = streams
        self.jobs = jobs
        self.keys = keys
        differences = false
    }

    /// The pass whose keys are `|inputs[s] − inputs[streams]|`, one stream per tensor before the last.
    init(differences readers: @escaping @Sendable () throws -> [TensorReader], count: Int, streams: Int, jobs: Int) {
        self.readers = readers
        self.count = count
        self.streams = streams
        self.jobs = jobs
        self.keys = { inputs, count, keys, _ in
            let b = inputs[streams]
            for s in 0..<streams {
                let x = inputs[s], key = keys[s]
                for j in 0..<count { key[j] = Swift.abs(x[j] - b[j]) }
            }
        }
        differences = true
    }

    /// A pass with one key per element.
    init(readers: @escaping @Sendable () throws -> [TensorReader], count: Int, jobs: Int,
         keys single: @escaping @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ keys: UnsafeMutablePointer<Double>,
                                           _ position: Int) -> Void) {
        self.init(readers: readers, count: count, streams: 1, jobs: jobs) { inputs, count, keys, position in
            single(inputs, count, keys[0], position)
        }
    }

    /// Runs one pass: `block(keys, count, position)` per block with every stream's keys, results
    /// folded in block order.
    /// With `raw`, a pass of `differences` whose tensors are all read in place hands each block's
    /// stored elements and their kinds to `raw` instead.
    func runStreams<T: Sendable>(_ block: @escaping @Sendable (_ keys: [UnsafeMutablePointer<Double>], _ count: Int, _ position: Int) -> T,
                                 raw: (@Sendable (_ inputs: [UnsafeRawPointer], _ kinds: [Int32], _ count: Int) -> T)? = nil,
                                 fold: ([T]) throws -> Void) throws {
        let keys = self.keys, streams = self.streams
        let readers = try self.readers()
        let kinds = readers.compactMap(\.tensor.dtype.rawKind)
        var inPlace: Lockstep.PositionedRawKernel<T>?
        if differences, kinds.count == readers.count, let raw {
            inPlace = { inputs, count, _, _ in raw(inputs, kinds, count) }
        }
        try Lockstep.run(readers, jobs: jobs, output: nil, raw: inPlace, positioned: { inputs, count, scratch, position in
            if streams == 1 {
                keys(inputs, count, [scratch], position)
                return block([scratch], count, position)
            }
            let storage = UnsafeMutablePointer<Double>.allocate(capacity: streams * count)
            defer { storage.deallocate() }
            let streamKeys = (0..<streams).map { storage + $0 * count }
            keys(inputs, count, streamKeys, position)
            return block(streamKeys, count, position)
        }, fold: fold)
    }

    /// Runs one pass over stream `stream` alone: `block(keys, count, position)` per block.
    func run<T: Sendable>(stream: Int = 0, _ block: @escaping @Sendable (_ keys: UnsafePointer<Double>, _ count: Int, _ position: Int) -> T,
                          fold: ([T]) throws -> Void) throws {
        try runStreams({ keys, count, position in block(keys[stream], count, position) }, fold: fold)
    }

    /// The keys of `runs` runs of `length` consecutive elements spread evenly over the tensors
    /// (the first at the start, the last at the end), per stream, read without the elements
    /// between them where the sources allow it. Each tensor's runs are read and decoded on their
    /// own, the tensors side by side (the runs are many small reads: a seventh of a ties run when
    /// they were read one tensor after another).
    func sample(runs: Int, length: Int) throws -> [[Double]] {
        precondition(runs >= 2 && runs * length <= count)
        let readers = try self.readers()
        let count = self.count
        let starts = (0..<runs).map { r in (count - length) / (runs - 1) * r + (r == runs - 1 ? (count - length) % (runs - 1) : 0) }
        let values = try parallelMap(sizes: readers.map { _ in 1 }, jobs: jobs, serial: !readers.allSatisfy(\.readsConcurrently)) { k, _ in
            let reader = readers[k], dtype = reader.tensor.dtype, width = dtype.byteWidth ?? 1
            let raw = RawBuffer(byteCount: runs * length * width)
            try reader.readRuns(at: starts.map { $0 * width }, count: length * width, into: raw.base)
            return [Double](unsafeUninitializedCapacity: runs * length) { decoded, initialized in
                dtype.decode(raw.base, count: runs * length, into: decoded.baseAddress!)
                initialized = runs * length
            }
        }
        // The keys of each run, from every tensor's decoded run (one flat array per side).
        let n = runs * length
        var inputs = Array(values.joined()), samples = [Double](repeating: 0, count: streams * n)
        inputs.withUnsafeMutableBufferPointer { inputs in
            samples.withUnsafeMutableBufferPointer { samples in
                for (r, start) in starts.enumerated() {
                    keys(values.indices.map { inputs.baseAddress! + $0 * n + r * length }, length,
                         (0..<streams).map { samples.baseAddress! + $0 * n + r * length }, start)
                }
            }
        }
        return (0..<streams).map { Array(samples[($0 * n)..<($0 * n + n)]) }
    }
}

/// Exact order statistics of a key pass in bounded memory. Keys are compared by their bits
/// (non-negative doubles order like their bits; a NaN sorts above +∞).
///
/// The keys at the wanted positions are first bracketed from a sample (`KeyPass.sample`): one
/// pass then counts the keys below each bracket and at its two ends, block by block, and keeps
/// the keys strictly inside it (a few percent of the tensor), among which the key is selected in
/// memory. Small tensors are bracketed whole. When a key falls outside its bracket, or the keys
/// inside would exceed `limit`, that position is found by radix narrowing instead: 16 bits of
/// the key a pass, until the candidates fit in `limit`.
public enum Selection {
    /// The key at one ascending position, with how many keys are below it and equal to it.
    public struct Rank: Sendable, Equatable {
        /// The key's bits.
        public let bits: UInt64
        public let less: Int
        public let equal: Int
        /// How many keys equal to the key precede each block (`Partition.blockElements`), when
        /// the selection saw them in C order (it does unless 64 bits of radix passes found it).
        public var equalBefore: [Int]? = nil

        public var value: Double { Double(bitPattern: bits) }
    }

    /// Candidates held in memory at most (8 bytes each).
    public static let defaultLimit = 1 << 22
    /// Tensors of at most this many elements are bracketed whole, without a sample.
    static let defaultWhole = 1 << 16
    /// The sample of a tensor of `count` elements: up to 256 runs of up to 64 consecutive
    /// elements (16 Ki keys), at most half the tensor.
    static func sampleShape(_ count: Int) -> (runs: Int, length: Int) {
        let length = Swift.min(64, Swift.max(1, count / 1024))
        return (Swift.min(256, count / length / 2), length)
    }

    #if DEBUG
    /// Tests lower the limit to run the radix passes on small tensors.
    @TaskLocal static var limitOverride: Int?
    /// Tests lower the whole-tensor size to bracket small tensors from a sample, and can
    /// shrink the bracket margin (in sampled keys) to force misses.
    @TaskLocal static var wholeOverride: Int?
    @TaskLocal static var marginOverride: Int?
    #endif

    static var limit: Int {
        #if DEBUG
        if let limitOverride { return limitOverride }
        #endif
        return defaultLimit
    }

    static var whole: Int {
        #if DEBUG
        if let wholeOverride { return wholeOverride }
        #endif
        return defaultWhole
    }

    /// The bits of a key (its sign cleared, so −0 is 0).
    @inline(__always)
    static func bits(_ key: Double) -> UInt64 { key.bitPattern & 0x7FFF_FFFF_FFFF_FFFF }

    /// The keys at ascending positions `positions[s]` of each stream s of `pass`, in one pass
    /// over the tensors (plus a small sample) when the brackets hold them.
    static func ranks(_ positions: [[Int]], of pass: KeyPass) throws -> [[Rank]] {
        precondition(positions.count == pass.streams)
        precondition(positions.joined().allSatisfy { $0 >= 0 && $0 < pass.count })
        let brackets = try self.brackets(of: pass) { _ in positions }
        let scans = try scan(brackets, of: pass)
        // Every position's selection side by side; the missed ones by radix passes after.
        let wanted = positions.enumerated().flatMap { s, wanted in wanted.map { (stream: s, position: $0) } }
        let found = try parallelMap(sizes: wanted.map { _ in 1 }, jobs: pass.jobs) { i, _ -> Rank? in
            let (s, position) = wanted[i]
            return scans[brackets.firstIndex { $0.stream == s && $0.positions.contains(position) }!].rank(at: position)
        }
        var ranks = positions.map { _ in [Rank]() }
        for (i, (s, position)) in wanted.enumerated() {
            ranks[s].append(try found[i] ?? radixRank(at: position, stream: s, of: pass))
        }
        return ranks
    }

    /// A range of key bits [lo, hi] expected to hold the keys at `positions` of one stream.
    struct Bracket {
        let stream: Int
        var lo: UInt64, hi: UInt64
        var positions: [Int]
        /// The share of the sample's keys inside, so a scan can reserve room for the tensor's.
        var share = 0.0
    }

    /// Brackets from a sample (merged where they overlap) for the positions `positions(sorted)`
    /// wants, given each stream's sorted sample of key bits; or the whole key range for a small
    /// tensor (which `positions(nil)` then names).
    static func brackets(of pass: KeyPass, positions: ([[UInt64]]?) -> [[Int]]) throws -> [Bracket] {
        let count = pass.count
        let shape = sampleShape(count)
        guard count > whole && shape.runs >= 2 else {
            let positions = positions(nil)
            return positions.indices.filter { !positions[$0].isEmpty }.map { Bracket(stream: $0, lo: 0, hi: .max, positions: positions[$0]) }
        }
        let raw = try pass.sample(runs: shape.runs, length: shape.length)
        let samples = try parallelMap(sizes: raw.map(\.count), jobs: pass.jobs) { s, _ in
            var sorted = raw[s].map(bits), scratch = sorted
            wsk_sort_u64(&sorted, sorted.count, &scratch)
            return sorted
        }
        let positions = positions(samples)
        var brackets: [Bracket] = []
        for (s, wanted) in positions.enumerated() where !wanted.isEmpty {
            let sorted = samples[s]
            let size = Double(sorted.count)
            var own: [Bracket] = []
            for position in wanted.sorted() {
                let f = Double(position) / Double(count)
                var margin = Int(5 * (size * f * (1 - f)).squareRoot() + 0.005 * size) + 8
                #if DEBUG
                if let marginOverride { margin = marginOverride }
                #endif
                let r = Int(f * size)
                let lo = r - margin < 0 ? 0 : sorted[r - margin]
                let hi = r + margin >= sorted.count ? UInt64.max : sorted[r + margin]
                let share = Double(Swift.min(r + margin, sorted.count) - Swift.max(r - margin, 0)) / size
                if var last = own.last, lo <= last.hi {
                    last.hi = Swift.max(last.hi, hi)
                    last.positions.append(position)
                    last.share += share
                    own[own.count - 1] = last
                } else {
                    own.append(Bracket(stream: s, lo: lo, hi: hi, positions: [position], share: share))
                }
            }
            brackets += own
        }
        return brackets
    }

    /// What one pass saw of one bracket.
    struct Scan: Sendable {
        let bracket: Bracket
        var below = 0
        /// Keys equal to lo and to hi (hi ≠ lo) per block.
        var atLo: [Int] = [], atHi: [Int] = []
        /// The keys strictly inside, in C order; nil once they exceeded the limit.
        var inside: [UInt64]? = []
        /// How many of them each block holds.
        var insideSizes: [Int] = []
        /// How many keys are strictly inside.
        var between = 0

        /// The rank at `position`, or nil when the bracket missed it.
        func rank(at position: Int) -> Rank? {
            let lo = atLo.reduce(0, +), hi = bracket.hi == bracket.lo ? 0 : atHi.reduce(0, +)
            if position < below { return nil }
            if position < below + lo {
                return Rank(bits: bracket.lo, less: below, equal: lo, equalBefore: prefixSums(atLo))
            }
            if position < below + lo + between {
                guard let inside else { return nil }
                let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: 2 * inside.count + 1)
                defer { scratch.deallocate() }
                var smaller = Int64(below + lo)
                var equalBefore = [Int64](repeating: 0, count: insideSizes.count + 1)
                let value = wsk_rank_inside(inside, insideSizes, insideSizes.count, position - below - lo, &smaller, &equalBefore, scratch)
                return Rank(bits: value, less: Int(smaller), equal: Int(equalBefore[insideSizes.count]),
                            equalBefore: equalBefore.map(Int.init))
            }
            if position < below + lo + between + hi {
                return Rank(bits: bracket.hi, less: below + lo + between, equal: hi, equalBefore: prefixSums(atHi))
            }
            return nil
        }

        func prefixSums(_ counts: [Int]) -> [Int] {
            var sums = [0]
            sums.reserveCapacity(counts.count + 1)
            for n in counts { sums.append(sums.last! + n) }
            return sums
        }
    }

    /// One pass over `pass` that counts and collects every bracket's keys.
    static func scan(_ brackets: [Bracket], of pass: KeyPass) throws -> [Scan] {
        struct Block: Sendable {
            var counts: [Int]
            var inside: [[UInt64]]
        }
        let limits = brackets.map { ($0.stream, $0.lo, $0.hi) }
        var scans = brackets.map { Scan(bracket: $0) }
        for b in scans.indices {
            scans[b].inside?.reserveCapacity(Swift.min(Self.limit, Int(brackets[b].share * 1.1 * Double(pass.count))))
        }
        let streams = pass.streams
        try pass.runStreams({ keys, count, _ in
            // Decoded keys: one bracket at a time.
            var block = Block(counts: [], inside: [])
            let held = UnsafeMutablePointer<UInt64>.allocate(capacity: count + 8)
            defer { held.deallocate() }
            for (stream, lo, hi) in limits {
                var counts: [Int64] = [0, 0, 0]
                let m = wsk_bracket(keys[stream], count, lo, hi, &counts, held)
                block.counts += counts.map(Int.init)
                block.inside.append(Array(UnsafeBufferPointer(start: held, count: m)))
            }
            return block
        }, raw: { inputs, kinds, count in
            // Every bracket at once, each stream's keys computed once.
            let held = UnsafeMutablePointer<UInt64>.allocate(capacity: limits.count * (count + 8))
            defer { held.deallocate() }
            var spans = limits.enumerated().map { b, limit in
                var span = wsk_bracket_span()
                span.x = inputs[limit.0]
                span.kind = kinds[limit.0]
                span.lo = limit.1
                span.hi = limit.2
                span.inside = held + b * (count + 8)
                return span
            }
            wsk_bracket_deltas(&spans, spans.count, inputs[streams], kinds[streams], count)
            return Block(counts: spans.flatMap { [Int($0.counts.0), Int($0.counts.1), Int($0.counts.2)] },
                         inside: spans.map { Array(UnsafeBufferPointer(start: $0.inside, count: $0.held)) })
        }, fold: { blocks in
            let limit = Self.limit
            for block in blocks {
                for b in scans.indices {
                    scans[b].below += block.counts[3 * b]
                    scans[b].atLo.append(block.counts[3 * b + 1])
                    scans[b].atHi.append(block.counts[3 * b + 2])
                    scans[b].between += block.inside[b].count
                    scans[b].inside?.append(contentsOf: block.inside[b])
                    scans[b].insideSizes.append(block.inside[b].count)
                    if scans[b].between > limit { scans[b].inside = nil }
                }
            }
        })
        return scans
    }

    /// The key at `position` of stream `stream` by radix narrowing on the key bits, 16 bits a
    /// pass, then in memory once the candidates fit in `limit`.
    static func radixRank(at position: Int, stream: Int, of pass: KeyPass) throws -> Rank {
        let limit = Self.limit
        var prefix: UInt64 = 0
        var prefixBits = 0
        var below = 0
        var candidates = pass.count
        while true {
            let shift = UInt64(64 - prefixBits)
            let (matchPrefix, bitsSoFar) = (prefix, prefixBits)
            @Sendable func matches(_ key: UInt64) -> Bool { bitsSoFar == 0 || key >> shift == matchPrefix }
            if candidates <= limit {
                var blocks: [[UInt64]] = []
                try pass.run(stream: stream, { keys, count, _ in
                    var part: [UInt64] = []
                    for j in 0..<count where matches(bits(keys[j])) { part.append(bits(keys[j])) }
                    return part
                }, fold: { blocks += $0 })
                let bracket = Bracket(stream: stream, lo: 0, hi: 0, positions: [position])
                // Every candidate as "inside" a bracket whose ends hold nothing.
                let scan = Scan(bracket: bracket, below: below, atLo: blocks.map { _ in 0 }, atHi: blocks.map { _ in 0 },
                                inside: Array(blocks.joined()), insideSizes: blocks.map(\.count),
                                between: blocks.reduce(0) { $0 + $1.count })
                return scan.rank(at: position)!
            }
            let digitShift = UInt64(48 - prefixBits)
            var histogram = [Int](repeating: 0, count: 1 << 16)
            try pass.run(stream: stream, { keys, count, _ in
                var digits: [UInt16] = []
                for j in 0..<count where matches(bits(keys[j])) {
                    digits.append(UInt16(truncatingIfNeeded: bits(keys[j]) >> digitShift))
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
                return Rank(bits: prefix, less: below, equal: candidates)
            }
        }
    }
}

/// Which elements of a key pass a sparsifier keeps, by rank: every key whose bits lie in
/// [from, to], and of the keys equal to a band's value (outside that range), those whose rank
/// among them (in C order) falls in the band's range.
struct RankWindow: Sendable {
    struct Band: Sendable {
        let value: UInt64
        let ranks: Range<Int>
        /// How many keys equal to `value` precede each block (`Partition.blockElements`).
        var before: [Int] = []
    }

    var from: UInt64
    var to: UInt64
    var bands: [Band]

    /// Keeps everything.
    static let all = RankWindow(from: 0, to: .max, bands: [])
    /// Keeps nothing.
    static let none = RankWindow(from: 1, to: 0, bands: [])

    /// The `k` largest of `count` keys, given the key at ascending position `count − k`; of
    /// equal keys at the cut-off, the earliest in C order.
    static func largest(_ k: Int, count: Int, cut: @autoclosure () throws -> Selection.Rank) rethrows -> RankWindow {
        guard k < count else { return .all }
        guard k > 0 else { return .none }
        let cut = try cut()
        let above = count - cut.less - cut.equal
        return RankWindow(from: cut.bits + 1, to: .max,
                          bands: [Band(value: cut.bits, ranks: 0..<(k - above), before: cut.equalBefore ?? [])])
    }

    /// The `k(nonzero)` largest keys of a one-stream pass, where `nonzero` is how many keys are
    /// not 0 (SCE keeps a share of the nonzero variances): the zeros are counted in the same scan
    /// as the cut-off's bracket (expected where the sample's share of zeros puts it), by a
    /// bracket [0, 0] of their own.
    static func largest(_ k: (_ nonzero: Int) -> Int, ofNonzero pass: KeyPass) throws -> (window: RankWindow, nonzero: Int) {
        precondition(pass.streams == 1)
        let count = pass.count
        var brackets = try Selection.brackets(of: pass) { samples in
            guard let sample = samples?[0], !sample.isEmpty else { return [[0]] }
            let zeros = sample.prefix { $0 == 0 }.count
            let nonzero = count - Int(Double(zeros) / Double(sample.count) * Double(count))
            return [[Swift.min(Swift.max(count - k(nonzero), 0), count - 1)]]
        }
        brackets.append(Selection.Bracket(stream: 0, lo: 0, hi: 0, positions: []))
        let scans = try Selection.scan(brackets, of: pass)
        let nonzero = count - scans[scans.count - 1].atLo.reduce(0, +)
        let kept = k(nonzero)
        let window = try largest(kept, count: count, cut: try scans[0].rank(at: count - kept)
                                     ?? Selection.radixRank(at: count - kept, stream: 0, of: pass))
        return (window, nonzero)
    }

    /// Ascending positions `from ..< to` of a stable ascending sort (equal keys in C order),
    /// given the keys at positions `from` and `to − 1`.
    static func positions(_ from: Int, _ to: Int, low: Selection.Rank, high: Selection.Rank) -> RankWindow {
        guard from < to else { return .none }
        if low.bits == high.bits {
            return RankWindow(from: 1, to: 0,
                              bands: [Band(value: low.bits, ranks: (from - low.less)..<(to - low.less), before: low.equalBefore ?? [])])
        }
        return RankWindow(from: low.bits + 1, to: high.bits - 1,
                          bands: [Band(value: low.bits, ranks: (from - low.less)..<low.equal, before: low.equalBefore ?? []),
                                  Band(value: high.bits, ranks: 0..<(to - high.less), before: high.equalBefore ?? [])])
    }

    /// Whether the window needs a census pass for tie ranks: a band keeps some of its keys and
    /// the selection did not already count them block by block.
    var needsCensus: Bool { bands.contains { $0.ranks.count > 0 && $0.before.isEmpty } }

    /// Counts, in one pass over `stream`, the keys equal to each band's value before every
    /// block, and sums `‖keys‖₁` and the kept keys (in block order, so the sums do not depend
    /// on `--jobs`).
    mutating func census(_ pass: KeyPass, stream: Int = 0) throws -> (total: Double, kept: Double, keptCount: Int) {
        let values = bands.map(\.value), from = from, to = to
        struct Block: Sendable { var equal: [Int]; var total: Double; var strict: Double; var strictCount: Int }
        var before = [[Int]](repeating: [0], count: bands.count)
        var total = 0.0, strict = 0.0, strictCount = 0
        try pass.run(stream: stream, { keys, count, _ in
            var block = Block(equal: [Int](repeating: 0, count: values.count), total: 0, strict: 0, strictCount: 0)
            for j in 0..<count {
                let key = keys[j], bits = Selection.bits(key)
                block.total += key
                if from <= bits && bits <= to {
                    block.strict += key
                    block.strictCount += 1
                }
                for (b, value) in values.enumerated() where bits == value { block.equal[b] += 1 }
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
            kept += Double(keptTies) * Double(bitPattern: bands[b].value)
            keptCount += keptTies
        }
        return (total, kept, keptCount)
    }

    /// The window for the C kernels from the block starting at C-order `position` on. A band
    /// whose ties in this block (known from `before`) all fall in its range is kept by value,
    /// and one whose ties all fall outside it is left out, so only a block where a band's range
    /// starts or ends counts ties one by one.
    func kernelWindow(at position: Int) -> wsk_window {
        var window = wsk_window()
        window.from = from
        window.to = to
        let block = position / Partition.blockElements
        var partial: [(Band, Int)] = [], always: [UInt64] = []
        for band in bands {
            let seen = band.before.isEmpty ? 0 : band.before[block]
            if block + 1 < band.before.count {
                let ties = seen..<band.before[block + 1]
                if ties.isEmpty || band.ranks.isEmpty || ties.upperBound <= band.ranks.lowerBound || ties.lowerBound >= band.ranks.upperBound {
                    continue
                }
                if ties.lowerBound >= band.ranks.lowerBound && ties.upperBound <= band.ranks.upperBound {
                    always.append(band.value)
                    continue
                }
            }
            partial.append((band, seen))
        }
        window.bands = Int32(partial.count)
        window.value = (partial.first?.0.value ?? 0, partial.count > 1 ? partial[1].0.value : 0)
        window.first = (Int64(partial.first?.0.ranks.lowerBound ?? 0), Int64(partial.count > 1 ? partial[1].0.ranks.lowerBound : 0))
        window.end = (Int64(partial.first?.0.ranks.upperBound ?? 0), Int64(partial.count > 1 ? partial[1].0.ranks.upperBound : 0))
        window.seen = (Int64(partial.first?.1 ?? 0), Int64(partial.count > 1 ? partial[1].1 : 0))
        window.always = Int32(always.count)
        window.always_value = (always.first ?? 0, always.count > 1 ? always[1] : 0)
        return window
    }

    /// A cursor that answers "is the key at this position kept?" in C order, for the block of
    /// `Partition.blockElements` keys starting at `position` (a pass makes one per block).
    func cursor(at position: Int) -> Cursor { Cursor(window: kernelWindow(at: position)) }

    /// The window's bounds and its (at most two) bands in plain fields, for the per-element loop.
    struct Cursor {
        var window: wsk_window

        /// Whether the next key (in C order) is kept.
        @inline(__always)
        mutating func keeps(_ key: Double) -> Bool {
            let bits = Selection.bits(key)
            var kept = window.from <= bits && bits <= window.to
            if window.always > 0 && bits == window.always_value.0 { kept = true }
            if window.always > 1 && bits == window.always_value.1 { kept = true }
            if window.bands > 0 && bits == window.value.0 {
                if window.seen.0 >= window.first.0 && window.seen.0 < window.end.0 { kept = true }
                window.seen.0 += 1
            }
            if window.bands > 1 && bits == window.value.1 {
                if window.seen.1 >= window.first.1 && window.seen.1 < window.end.1 { kept = true }
                window.seen.1 += 1
            }
            return kept
        }
    }
}
