import CKernels
import Foundation
import Testing
@testable import WSAMergeKit

/// Every instruction-set level of the kernels must give the same bits: a merge written on one
/// machine is byte-identical to the one written on another. Each kernel is run at every level
/// this CPU supports, on lengths around the vector widths and the combine's 256-element tiles,
/// with NaNs, infinities, signed zeros, subnormals and BF16 rounding ties among the values.
@Suite(.serialized) struct SIMDLevelTests {
    static let lengths = [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 255, 256, 257, 263, 520, 1031]

    /// Gaussian values of scale 0.02 with a special value at every 17th element and rounding ties.
    static func values(_ n: Int, seed: UInt64) -> [Double] {
        var rng = SplitMix(seed: seed)
        let specials: [Double] = [.nan, .infinity, -.infinity, 0, -0.0, 0x1p-1060, -0x1p-140, 0x1p-133, 1e300, 3.0e38]
        return (0..<n).map { i in
            let u = Double(rng.next() >> 11 | 1) * 0x1p-53, v = Double(rng.next() >> 11) * 0x1p-53
            let g = (-2 * log(u)).squareRoot() * cos(2 * .pi * v) * 0.02
            switch i % 17 {
            case 5: return specials[(i / 17) % specials.count]
            case 11: return Double(Float(bitPattern: Float(g).bitPattern & 0xFFFF_0000 | 0x8000))  // a BF16 tie
            default: return g
            }
        }
    }

    /// Finite values only (the combine's fast path and the moments' sums).
    static func finite(_ n: Int, seed: UInt64) -> [Double] { values(n, seed: seed).map { $0.isFinite && abs($0) < 1e30 ? $0 : 0.25 } }

    /// `body` run at every supported level, as bit patterns; the levels must agree with baseline.
    func expectSameBits(_ what: String, _ body: () -> [UInt64]) {
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        var baseline: [UInt64]?
        for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
            #expect(SIMDLevel.use(level) == level)
            let bits = body()
            if let baseline {
                // Compared as a Bool: a failing `==` on arrays would make the test library print them.
                let same = bits == baseline
                let first = zip(bits, baseline).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                #expect(same, "\(what): \(level) differs from baseline (first at \(first ?? -1))")
            } else {
                baseline = bits
            }
        }
    }

    @Test func conversionsAgree() {
        for n in Self.lengths {
            let x = Self.values(n, seed: UInt64(n))
            let bf16 = x.map { UInt16(Float($0).bitPattern >> 16) }, f32 = x.map { Float($0) }
            let f16 = x.map { Float16($0).bitPattern }
            expectSameBits("decode n=\(n)") {
                var a = [Double](repeating: 0, count: n), b = a, c = a
                wsk_decode_bf16(bf16, n, &a)
                wsk_decode_f32(f32, n, &b)
                wsk_decode_f16(f16, n, &c)
                return (a + b + c).map(\.bitPattern)
            }
            expectSameBits("encode n=\(n)") {
                var h = [UInt16](repeating: 0, count: n), f = [Float](repeating: 0, count: n), g = h
                let flagged = wsk_encode_bf16(x, n, &h)
                wsk_encode_f32(x, n, &f)
                let flagged16 = wsk_encode_f16(x, n, &g)
                return h.map { UInt64($0) } + f.map { UInt64($0.bitPattern) } + g.map { UInt64($0) } + [UInt64(flagged), UInt64(flagged16)]
            }
            expectSameBits("scale, axpy, nonfinite n=\(n)") {
                var out = [Double](repeating: 0, count: n)
                wsk_scale(&out, x, 0.3, n)
                wsk_axpy(&out, x.reversed(), -1.7, n)
                return out.map(\.bitPattern) + [UInt64(wsk_nonfinite(x, n))]
            }
        }
    }

    @Test func momentsAgree() {
        for n in Self.lengths {
            let x = Self.finite(n, seed: UInt64(100 + n))
            expectSameBits("moments n=\(n)") {
                var first = wsk_pass1(), second = wsk_pass2()
                wsk_moments_pass1(x, n, &first)
                wsk_moments_pass2(x, n, 0.001, &second)
                var s1 = 0.0, s2 = 0.0
                wsk_scope_pass2(x, n, -0.002, &s1, &s2)
                return [first.sum, first.abs_sum, first.min, first.max, Double(first.zeros),
                        second.s1, second.s2, second.s3, second.s4, s1, s2].map(\.bitPattern)
            }
            for (kind, bytes) in Self.stored(x) {
                expectSameBits("scope pass 1, squares, kind \(kind) n=\(n)") {
                    var copy = [Double](repeating: 0, count: n)
                    var sum = 0.0, mn = 0.0, mx = 0.0, squares = 0.0, squares2 = 0.0, minimum = 0.0
                    var signs: Int32 = 0
                    bytes.withUnsafeBytes { raw in
                        wsk_scope_pass1(raw.baseAddress, kind, n, &copy, &sum, &mn, &mx)
                        wsk_squares_min(raw.baseAddress, kind, n, &squares, &minimum)
                        wsk_squares_signs(raw.baseAddress, kind, n, &squares2, &signs)
                    }
                    return copy.map(\.bitPattern) + [sum, mn, mx, squares, minimum, squares2, Double(signs)].map(\.bitPattern)
                }
            }
        }
    }

    @Test func fisherAndCombineAgree() {
        for n in Self.lengths {
            let inputs = (0..<3).map { Self.finite(n, seed: UInt64(200 + 10 * n + $0)) }
            let fishers = (0..<3).map { k in Self.values(n, seed: UInt64(300 + n + k)).map { $0.isFinite ? $0 * $0 * 50 : 0 } }
            expectSameBits("fisher accumulate and divide n=\(n)") {
                var out = [Double](repeating: 0, count: n), den = out
                for k in 0..<3 { wsk_fisher_accumulate(&out, &den, inputs[k], fishers[k], [0.5, 2, 1.25][k], 1e-6, n, k == 0 ? 1 : 0) }
                let empty = wsk_fisher_divide(&out, den, n)
                return out.map(\.bitPattern) + den.map(\.bitPattern) + [UInt64(empty)]
            }
            let stored = inputs.map(Self.stored), storedFisher = fishers.map(Self.stored)
            for mode in [WSK_AVERAGE, WSK_RESCALE, WSK_FISHER] {
                for kind in 0..<4 {
                    for outKind in [WSK_BF16, WSK_F32, WSK_F64, WSK_F16] {
                        expectSameBits("combine mode \(mode) kind \(kind) out \(outKind) n=\(n)") {
                            var output = [UInt8](repeating: 0, count: 8 * n)
                            let redo = Self.combine(stored.map { $0[kind].1 }, storedFisher.map { $0[kind].1 }, kind: Int32(kind),
                                                    mode: Int32(mode), outKind: Int32(outKind), n: n, into: &output)
                            return output.map { UInt64($0) } + [UInt64(redo)]
                        }
                    }
                }
            }
        }
    }

    /// The same merges and statistics through the library at every level.
    @Test func mergesAndStatisticsAgree() throws {
        let (models, fishers) = try RawKernelTests().inputs()
        defer { for path in models + fishers { Bytes.removeDirectory(of: path) } }
        for strategy in ["average", "wsa", "fisher"] {
            for dtype in [nil, DType.F32, .F64, .F16] {
                var bytes: [SIMDLevel: Data] = [:]
                let previous = SIMDLevel.current
                defer { SIMDLevel.use(previous) }
                for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
                    SIMDLevel.use(level)
                    bytes[level] = try RawKernelTests.merge(models, fishers: fishers, strategy: strategy, dtype: dtype).0
                }
                let same = Set(bytes.values).count == 1
                #expect(same, "\(strategy) \(dtype?.rawValue ?? "same dtype"): levels \(bytes.keys.sorted { $0.rawValue < $1.rawValue }) differ")
            }
        }
        let checkpoint = try CheckpointReader.open(models[1])
        var moments: [[Moments?]] = []
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
            SIMDLevel.use(level)
            moments.append(try StatisticsRun.measure(checkpoint, filter: .all, jobs: 2).map(\.moments))
        }
        #expect(moments.allSatisfy { $0 == moments[0] })
    }

    /// The selection's scan of every bracket at once (`wsk_bracket_deltas`: the base decoded once
    /// per tile, each stream's keys once) counts and keeps exactly what `wsk_bracket` does over
    /// the decoded keys |x − b|, for every stored kind and a mix of kinds, one and two brackets
    /// per stream, ties at both ends and tails past the tiles, at every level.
    @Test func bracketScansAgree() {
        /// A value as stored in `kind` (bytes) and as decoded back.
        func store(_ v: Double, _ kind: Int32) -> (bytes: [UInt8], value: Double) {
            switch Int(kind) {
            case Int(WSK_BF16):
                let h = UInt16(Float(v).bitPattern >> 16)
                return (withUnsafeBytes(of: h) { Array($0) }, Double(Float(bitPattern: UInt32(h) << 16)))
            case Int(WSK_F16): return (withUnsafeBytes(of: Float16(v).bitPattern) { Array($0) }, Double(Float16(v)))
            case Int(WSK_F32): return (withUnsafeBytes(of: Float(v)) { Array($0) }, Double(Float(v)))
            default: return (withUnsafeBytes(of: v) { Array($0) }, v)
            }
        }
        let (bf16, f16, f32, f64) = (Int32(WSK_BF16), Int32(WSK_F16), Int32(WSK_F32), Int32(WSK_F64))
        // The kinds of stream 0, stream 1 and the base.
        let mixes: [[Int32]] = [[bf16, bf16, bf16], [f16, f16, f16], [f32, f32, f32], [f64, f64, f64], [bf16, f32, f16]]
        let ends: [(stream: Int, lo: Double, hi: Double)] = [(0, 1.0 / 256, 8.0 / 256), (0, 10.0 / 256, 10.0 / 256),
                                                             (1, 0, 3.0 / 256)]
        for n in Self.lengths {
            // Values on one quantised grid, so that the brackets' ends have ties.
            let grid = (0..<3).map { Self.values(n, seed: UInt64(100 + $0)).map { $0.isFinite ? ($0 * 256).rounded() / 256 : $0 } }
            for kinds in mixes {
                let stored = (0..<3).map { k in grid[k].map { store($0, kinds[k]) } }
                // The stored elements in memory that outlives the calls.
                let memory = stored.map { elements -> UnsafeMutableRawPointer in
                    let bytes = elements.flatMap(\.bytes)
                    let p = UnsafeMutableRawPointer.allocate(byteCount: bytes.count + 1, alignment: 8)
                    p.copyMemory(from: bytes, byteCount: bytes.count)
                    return p
                }
                defer { memory.forEach { $0.deallocate() } }
                let held = UnsafeMutablePointer<UInt64>.allocate(capacity: ends.count * (n + 8))
                defer { held.deallocate() }
                expectSameBits("bracket scans of kinds \(kinds), n = \(n)") {
                    var expected: [UInt64] = []
                    for (b, end) in ends.enumerated() {
                        let keys = (0..<n).map { Swift.abs(stored[end.stream][$0].value - stored[2][$0].value) }
                        var counts: [Int64] = [0, 0, 0]
                        let m = wsk_bracket(keys, n, Selection.bits(end.lo), Selection.bits(end.hi), &counts, held + b * (n + 8))
                        expected += counts.map { UInt64(bitPattern: $0) } + [UInt64(m)] + Array(UnsafeBufferPointer(start: held + b * (n + 8), count: m))
                    }
                    var spans = ends.enumerated().map { b, end in
                        var span = wsk_bracket_span()
                        span.x = UnsafeRawPointer(memory[end.stream])
                        span.kind = kinds[end.stream]
                        span.lo = Selection.bits(end.lo)
                        span.hi = Selection.bits(end.hi)
                        span.inside = held + b * (n + 8)
                        return span
                    }
                    wsk_bracket_deltas(&spans, spans.count, memory[2], kinds[2], n)
                    let atOnce = spans.flatMap { span in
                        [span.counts.0, span.counts.1, span.counts.2].map { UInt64(bitPattern: $0) } + [UInt64(span.held)]
                            + Array(UnsafeBufferPointer(start: span.inside, count: span.held))
                    }
                    let same = atOnce == expected  // a Bool, so a failure does not print the arrays
                    #expect(same, "kinds \(kinds), n = \(n), \(SIMDLevel.current)")
                    return atOnce
                }
            }
        }
    }

    /// The scan's float prefilter (base and streams of BF16, F16 or F32, keys first compared in
    /// float) settles only what the double keys |x − b| would: bracket ends one double step from
    /// a key and between floats, keys that need rounding in float (x and b far apart), keys past
    /// the largest float, zeros, infinities and NaN, with the same counts and inside keys as
    /// `wsk_bracket`, at every level.
    @Test func bracketScanFloatPrefilterIsExact() {
        var rng = SplitMix(seed: 11)
        func value() -> Float {
            switch rng.next() % 16 {
            case 0: return [Float.nan, .infinity, -.infinity, 0, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, 0x1p-133][Int(rng.next() % 7)]
            case 1: return Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))  // any bits
            default:
                let exponent = Int(rng.next() % 61) - 30
                return Float(Double(Int64(bitPattern: rng.next()) >> 40) * 0x1p-24) * Float(sign: .plus, exponent: exponent, significand: 1)
            }
        }
        let n = 2053
        let xs = (0..<n).map { _ in value() }
        var bs: [Float] = []
        for i in 0..<n {
            if i % 5 == 0 { bs.append(xs[i]) } else if i % 7 == 0 { bs.append(Float(bitPattern: xs[i].bitPattern &+ 1)) } else { bs.append(value()) }
        }
        let keys: [Double] = (0..<n).map { i in Swift.abs(Double(xs[i]) - Double(bs[i])) }
        let finite: [Double] = keys.filter { $0.isFinite }.sorted()
        let at = { (q: Double) in finite[Int(q * Double(finite.count - 1))] }
        // Ends at keys, one double step off them, between floats, past the largest float, 0, ∞.
        var ends: [(Double, Double)] = [(0, 0), (0, at(0.5)), (at(0.25), at(0.75)), (at(0.25).nextUp, at(0.75).nextDown),
                                        (at(0.25).nextDown, at(0.75).nextUp), (Double(Float(at(0.4))) + Double(Float(at(0.4)).ulp) / 2, at(0.6)),
                                        (Double(Float.greatestFiniteMagnitude), 6e38), (at(0.9), .infinity), (at(0.1), at(0.1))]
        ends += ends.map { ($0.0, $0.1.nextUp) }
        let floats = xs + bs
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 8 * n, alignment: 64)
        defer { memory.deallocate() }
        memory.copyMemory(from: floats, byteCount: 8 * n)
        let held = UnsafeMutablePointer<UInt64>.allocate(capacity: ends.count * (n + 8))
        defer { held.deallocate() }
        expectSameBits("float prefilter") {
            var expected: [UInt64] = [], atOnce: [UInt64] = []
            var spans: [wsk_bracket_span] = []
            for (b, (lo, hi)) in ends.enumerated() {
                var counts: [Int64] = [0, 0, 0]
                let m = wsk_bracket(keys, n, Selection.bits(lo), Selection.bits(hi), &counts, held + b * (n + 8))
                expected += counts.map { UInt64(bitPattern: $0) } + [UInt64(m)] + Array(UnsafeBufferPointer(start: held + b * (n + 8), count: m))
                var span = wsk_bracket_span()
                span.x = UnsafeRawPointer(memory)
                span.kind = Int32(WSK_F32)
                span.lo = Selection.bits(lo)
                span.hi = Selection.bits(hi)
                span.inside = held + b * (n + 8)
                spans.append(span)
            }
            wsk_bracket_deltas(&spans, spans.count, memory + 4 * n, Int32(WSK_F32), n)
            for span in spans {
                atOnce += [span.counts.0, span.counts.1, span.counts.2].map { UInt64(bitPattern: $0) } + [UInt64(span.held)]
                    + Array(UnsafeBufferPointer(start: span.inside, count: span.held))
            }
            let same = atOnce == expected
            #expect(same, "\(SIMDLevel.current)")
            return atOnce
        }
    }

    /// The task-vector kernels (selection brackets, trims, sign election) give the same bytes at
    /// every level, with whole-tensor and sampled selection.
    @Test(arguments: TaskVectorTests.cases.indices)
    func taskVectorMergesAgree(_ index: Int) throws {
        let (strategy, parameters) = TaskVectorTests.cases[index]
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        for whole in [nil, 1] as [Int?] {
            var bytes: [SIMDLevel: Data] = [:]
            for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
                SIMDLevel.use(level)
                bytes[level] = try Selection.$wholeOverride.withValue(whole) { try TaskVectorTests().merge(strategy, parameters, jobs: 2) }
            }
            #expect(Set(bytes.values).count == 1, "\(strategy): levels differ")
        }
    }

    /// SCE's kernels (variances, the selection window, squares, election) give the same bytes at
    /// every level, over many blocks with ties, a tail and an infinity, whole and sampled.
    @Test func sceMergesAgree() throws {
        let models = try TaskVectorTests.largeModels()
        defer { for path in models { Bytes.removeDirectory(of: path) } }
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        func merge(_ topk: String) throws -> Data {
            let out = NSTemporaryDirectory() + "sce-\(UUID().uuidString).safetensors"
            defer { try? FileManager.default.removeItem(atPath: out) }
            var request = Merger.Request(inputs: Array(models[1...]), strategy: "sce", output: OutputOptions(path: out, layout: .safetensors))
            request.base = models[0]
            request.jobs = 2
            try request.parameters.assign("select_topk", words: [topk], for: SCEStrategy.declaration)
            _ = try Merger.run(request)
            return try Data(contentsOf: URL(fileURLWithPath: out))
        }
        for (topk, whole) in [("0.4", nil), ("0.4", 1), ("1", nil)] as [(String, Int?)] {
            var bytes: [SIMDLevel: Data] = [:]
            for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
                SIMDLevel.use(level)
                bytes[level] = try Selection.$wholeOverride.withValue(whole) { try merge(topk) }
            }
            #expect(Set(bytes.values).count == 1, "select_topk \(topk): levels differ")
        }
    }

    /// The best level is what /proc/cpuinfo's flags allow (the flags the kernel leaves set are
    /// those the OS also supports).
    /// DARE's keep test `u_j < density` (done on the draws' integer bits in the kernels) keeps
    /// exactly what the formula in doubles keeps, at every level, in the vector lanes and the
    /// tails: densities equal to a draw, one ulp either side of it, 0, 1, NaN and tiny ones.
    @Test func drawKeepsMatchTheFormula() {
        let draws = Draws(seed: 3, name: "w", input: 1)
        let position = 1_000_003, n = 1031
        let u = (0..<n).map { draws.u(position + $0) }
        var densities: [Double] = [0, 1, .nan, 0.5, 0x1p-53, 0x1p-60, 1 - 0x1p-53, 0.3, -0.5, 2]
        for j in [0, 7, 8, 500, 1030] { densities += [u[j], u[j].nextUp, u[j].nextDown] }
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
            SIMDLevel.use(level)
            for density in densities {
                var x = [Double](repeating: 1, count: n)
                let b = [Double](repeating: 0, count: n)
                let kept = wsk_trim_draws(&x, b, n, 1, draws.key, Int64(position), density)
                let expected = u.map { $0 < density }
                #expect(x.map { $0 == 1 } == expected, "\(level) density \(density)")
                #expect(Int(kept) == expected.filter { $0 }.count)
                var total = 0.0, keptSum = 0.0
                let f64 = DType.F64.rawKind!, ones = [Double](repeating: 1, count: n)
                wsk_draw_sums(ones, f64, b, f64, n, draws.key, Int64(position), density, &total, &keptSum)
                #expect(total == Double(n) && keptSum == Double(expected.filter { $0 }.count), "\(level) sums at density \(density)")
            }
        }
    }

    /// DELLA's marks as bits: a mask packed in pieces at any bit offset (`wsk_pack_bits`, pieces
    /// ending mid-byte as a group of odd-length rows does) is the mask bit by bit, and
    /// `wsk_trim_bits` from any byte of it keeps exactly the marked elements, at every level
    /// (tails of 0–7 elements, scale applied, NaN and infinities in dropped lanes zeroed).
    @Test func trimBitsKeepsTheMarkedElements() {
        var rng = SplitMix(seed: 41)
        let n = 1237
        let keep = (0..<n).map { _ in UInt8(rng.next() % 3 == 0 ? 0 : 1 + rng.next() % 2) }  // nonzero marks
        var expected = [UInt8](repeating: 0, count: (n + 7) / 8)
        for i in 0..<n where keep[i] != 0 { expected[i / 8] |= 1 << (i % 8) }
        for pieces in [[n], [1, n - 1], [3, 5, 8, 13, 70, n - 99], [7, 7, 7, n - 21]] {
            var bits = [UInt8](repeating: 0xA5, count: expected.count)
            var offset = 0
            for length in pieces {
                keep[offset..<offset + length].withUnsafeBufferPointer { wsk_pack_bits($0.baseAddress, length, &bits, offset) }
                offset += length
            }
            #expect(bits.prefix(n / 8) == expected.prefix(n / 8), "pieces \(pieces)")
            #expect(bits[n / 8] & UInt8((1 << (n % 8)) - 1) == expected[n / 8], "pieces \(pieces): the last byte")
        }
        let specials: [Double] = [.nan, .infinity, -3.5]
        var x = [Double](repeating: 0, count: n), b = x
        for i in 0..<n {
            x[i] = i % 5 == 0 ? specials[i % 3] : Double(i) / 8
            b[i] = Double(i % 11) / 4
        }
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
            SIMDLevel.use(level)
            for (from, count) in [(0, n), (8, 1), (16, 7), (64, 333), (1224, 13)] {
                var y = Array(x[from..<from + count])
                let base = Array(b[from..<from + count])
                let kept = expected.withUnsafeBufferPointer { wsk_trim_bits(&y, base, count, 0.5, $0.baseAddress! + from / 8) }
                let want: [UInt64] = (from..<from + count).map { keep[$0] != 0 ? ((x[$0] - b[$0]) * 0.5).bitPattern : 0 }
                #expect(y.map { $0.bitPattern } == want, "\(level) from \(from)")
                #expect(Int(kept) == keep[from..<from + count].filter { $0 != 0 }.count)
            }
        }
    }

    /// `wsk_trim_window` keeps what its rule says (kernels.h), at every level: keys in [from, to],
    /// keys equal to an always-kept value (next to the range, which widens it, or apart from it),
    /// and a band's ties by their rank in C order; on quantised keys with many ties.
    @Test func trimWindowKeepsWhatTheRuleSays() {
        var rng = SplitMix(seed: 11)
        let n = 1031
        let b = (0..<n).map { _ in Double(Int(rng.next() % 9) - 4) / 8 }
        let x = b.map { $0 + Double(Int(rng.next() % 13) - 6) / 16 }
        let keys = zip(x, b).map { Selection.bits($0 - $1) }
        let values = Array(Set(keys)).sorted()
        func bits(_ k: Int) -> UInt64 { values[Swift.min(Swift.max(k, 0), values.count - 1)] }
        // Ranges as the selections make them: keys above a cut-off value c (from = c + 1 in bits,
        // to the largest key), or between two values (c + 1 … d − 1); always-kept keys at c or d
        // (bordering the range) or elsewhere; a band at c.
        var windows: [wsk_window] = []
        for (c, d) in [(2, nil), (1, 5), (0, 1), (4, 3)] as [(Int, Int?)] {
            for always in [[], [c], d.map { [$0] } ?? [7], [c] + (d.map { [$0] } ?? [0]), [c + 6]] {
                for band in [nil, c] as [Int?] {
                    var w = wsk_window()
                    w.from = bits(c) + 1
                    w.to = d.map { bits($0) - 1 } ?? .max
                    w.always = Int32(always.count)
                    w.always_value = (always.count > 0 ? bits(always[0]) : 0, always.count > 1 ? bits(always[1]) : 0)
                    if let band {
                        w.bands = 1
                        w.value = (bits(band), 0)
                        w.first = (3, 0)
                        w.end = (40, 0)
                    }
                    windows.append(w)
                }
            }
        }
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
            SIMDLevel.use(level)
            for window in windows {
                var seen = 0
                let expected = keys.map { k -> Bool in
                    var keep = window.from <= k && k <= window.to
                    if window.always > 0 && k == window.always_value.0 { keep = true }
                    if window.always > 1 && k == window.always_value.1 { keep = true }
                    if window.bands > 0 && k == window.value.0 {
                        if seen >= window.first.0 && seen < window.end.0 { keep = true }
                        seen += 1
                    }
                    return keep
                }
                var w = window, trimmed = x
                let kept = wsk_trim_window(&trimmed, b, n, 2, &w)
                let want = (0..<n).map { expected[$0] ? (x[$0] - b[$0]) * 2 : 0 }
                #expect(trimmed == want && Int(kept) == expected.filter { $0 }.count,
                        "\(level) from \(window.from) to \(window.to) always \(window.always) bands \(window.bands)")
            }
        }
    }

    /// The task-vector combine gives the same bits and sign-election drops at every level, and
    /// reports non-finite output exactly when some output value is NaN or infinite (the flag
    /// is gathered as values are stored, in the vector lanes and the tail).
    @Test func taskVectorCombineAgreesAndFlagsNonFinite() {
        for n in Self.lengths {
            for inputs in [2, 3, 5] {
                for (elect, normalize) in [(1, 1), (1, 0), (0, 1), (0, 0)] {
                    for special in [false, true] {
                        // Finite task vectors, or with the specials (NaN, ±∞, 1e300 overflowing the sum).
                        let d = (0..<inputs).map { k in special ? Self.values(n, seed: UInt64(7 * n + k)) : Self.finite(n, seed: UInt64(7 * n + k)) }
                        let b = Self.finite(n, seed: UInt64(n + 99)), w = [0.5, -1.25, 2, 1, 0.75].prefix(inputs).map { $0 }
                        var flags: [Int32] = []
                        expectSameBits("tv_combine n=\(n) inputs=\(inputs) elect=\(elect) normalize=\(normalize) special=\(special)") {
                            var out = [Double](repeating: 0, count: n)
                            var dropped: Int64 = 0
                            let pointers = d.map { values in
                                let p = UnsafeMutablePointer<Double>.allocate(capacity: max(n, 1))
                                p.initialize(from: values, count: n)
                                return p
                            }
                            defer { pointers.forEach { $0.deallocate() } }
                            let flag = wsk_tv_combine(pointers.map { Optional($0) }, w, inputs, b, n, Int32(elect), Int32(normalize), 1.5, 2.5, &out, &dropped)
                            flags.append(flag)
                            #expect((flag != 0) == out.contains { !$0.isFinite }, "flag \(flag) for n=\(n) special=\(special)")
                            return out.map(\.bitPattern) + [UInt64(bitPattern: dropped)]
                        }
                        #expect(Set(flags).count <= 1)
                    }
                }
            }
        }
    }

    /// DELLA's keep decisions (`wsk_della_mask`) equal the rule computed from a full stable sort,
    /// at every level: `u_j < p[rank]`, ranks by |δ| ascending and equal keys in index order. Rows
    /// of every shape the bucketing meets: short ones (sorted outright), one key, Gaussian, on a
    /// grid (many ties, few distinct keys), clustered keys beside a far outlier (one bucket holds
    /// nearly all and is split again), a tail many octaves down (bucket 1), zeros, NaN and
    /// infinities, rows longer than the largest table, a stride, and p falling (ε < 0).
    @Test func dellaMaskMatchesAFullSort() {
        var rng = SplitMix(seed: 29)
        func gaussian() -> Double {
            let u = Double(rng.next() >> 11 | 1) * 0x1p-53, v = Double(rng.next() >> 11) * 0x1p-53
            return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
        }
        var rows: [(String, [Double])] = []
        for n in [1, 2, 3, 24, 25, 257, 1024, 5000] { rows.append(("gaussian \(n)", (0..<n).map { _ in 0.01 * gaussian() })) }
        rows.append(("one key", [Double](repeating: -0.25, count: 300)))
        rows.append(("zeros and one key", (0..<300).map { $0 % 3 == 0 ? 0 : 0.5 }))
        rows.append(("grid", (0..<1500).map { _ in Double(Int(rng.next() % 81) - 40) * 0x1p-12 }))
        rows.append(("clustered", (0..<1024).map { $0 == 700 ? 1e3 : 1 + 1e-12 * gaussian() }))
        rows.append(("long tail", (0..<1024).map { _ in 0.01 * gaussian() * pow(2, -Double(rng.next() % 40)) }))
        let specials: [Double] = [.nan, .infinity, -.infinity, 0, -0.0, 0x1p-1070]
        rows.append(("specials", (0..<600).map { $0 % 7 == 0 ? specials[($0 / 7) % specials.count] : 0.01 * gaussian() }))
        let draws = Draws(seed: 5, name: "della", input: 2)
        let previous = SIMDLevel.current
        defer { SIMDLevel.use(previous) }
        for (name, row) in rows {
            for (epsilon, stride) in [(0.15, 1), (-0.2, 1), (0.3, 3)] {
                let n = row.count
                var p = [Double](repeating: 0, count: n)
                wsk_della_probabilities(n, 0.5, epsilon, &p)
                let order = (0..<n).sorted { (Selection.bits(row[$0]), $0) < (Selection.bits(row[$1]), $1) }
                var expected = [UInt8](repeating: 0, count: n)
                for (rank, i) in order.enumerated() { expected[i] = draws.u(17 + i * stride) < p[rank] ? 1 : 0 }
                // The fibre spread `stride` apart, the elements between it left alone; δ = x − 0.
                var delta = [Double](repeating: 0.125, count: n * stride)
                for i in 0..<n { delta[i * stride] = row[i] }
                let zeros = [Double](repeating: 0, count: n * stride)
                for level in SIMDLevel.allCases where level.rawValue <= SIMDLevel.best.rawValue {
                    SIMDLevel.use(level)
                    var keep = [UInt8](repeating: 9, count: n * stride)
                    var scratch = [UInt64](repeating: 0, count: 7 * n)
                    wsk_della_mask(delta, Int32(WSK_F64), zeros, Int32(WSK_F64), n, stride, draws.key, 17, p, &keep, &scratch)
                    let got = (0..<n).map { keep[$0 * stride] }
                    let same = got == expected, untouched = (0..<n * stride).allSatisfy { $0 % stride == 0 || keep[$0] == 9 }
                    #expect(same && untouched, "\(name), ε \(epsilon), stride \(stride), \(level)")
                }
            }
        }
    }

    @Test func bestLevelFollowsTheCPUFlags() throws {
        #if arch(x86_64) && os(Linux)
        let info = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try #require(info.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: " ").map(String.init))
        let expected: SIMDLevel = ["avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(flags.contains) ? .avx512
            : flags.contains("avx2") ? .avx2 : .baseline
        #expect(SIMDLevel.best == expected)
        #else
        #expect(SIMDLevel.best == .baseline)
        #endif
    }

    @Test func environmentNamesALevel() {
        #expect(SIMDLevel.allCases.map { wsk_simd_level_named($0.description) } == [0, 1, 2])
        #expect(wsk_simd_level_named("sse4") == -1)
        #expect(SIMDLevel.use(.avx512).rawValue == SIMDLevel.best.rawValue)  // capped at what the CPU runs
        SIMDLevel.use(.best)
    }

    /// x stored as BF16, F32, F64 and F16 bytes (indexed by WSK kind).
    static func stored(_ x: [Double]) -> [(Int32, [UInt8])] {
        [(Int32(WSK_BF16), x.flatMap { Bytes.le(UInt16(Float($0).bitPattern >> 16)) }),
         (Int32(WSK_F32), x.flatMap { Bytes.le(Float($0)) }),
         (Int32(WSK_F64), x.flatMap { Bytes.le($0) }),
         (Int32(WSK_F16), x.flatMap { Bytes.le(Float16($0).bitPattern) })]
    }

    /// wsk_combine over three terms.
    static func combine(_ xs: [[UInt8]], _ fs: [[UInt8]], kind: Int32, mode: Int32, outKind: Int32, n: Int,
                        into output: inout [UInt8]) -> Int32 {
        let xp = xs.map { bytes in bytes.withUnsafeBytes { UnsafeMutableRawPointer.allocate(byteCount: max(1, $0.count), alignment: 8).initializeMemory(from: $0) } }
        let fp = fs.map { bytes in bytes.withUnsafeBytes { UnsafeMutableRawPointer.allocate(byteCount: max(1, $0.count), alignment: 8).initializeMemory(from: $0) } }
        defer { for p in xp + fp { p.deallocate() } }
        var terms = (0..<3).map { k in
            wsk_term(x: xp[k], fisher: fp[k], kind: kind, fisher_kind: kind, weight: [0.2, 0.5, 0.3][k], mean: [0.001, -0.002, 0.0005][k])
        }
        return wsk_combine(&terms, 3, mode, 0.0125, 1e-6, n, outKind, &output)
    }
}

private extension UnsafeMutableRawPointer {
    /// Copies `bytes` here and returns self.
    func initializeMemory(from bytes: UnsafeRawBufferPointer) -> UnsafeMutableRawPointer {
        if let base = bytes.baseAddress { copyMemory(from: base, byteCount: bytes.count) }
        return self
    }
}
