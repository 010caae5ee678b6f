import CKernels
import Testing
@testable import WSAMergeKit

/// Mergeable moments: blocks combine as one pass, and the hard cases come out exact.
@Suite struct MomentsTests {
    func moments(_ values: [Double]) -> Moments {
        values.withUnsafeBufferPointer { Moments(values: $0.baseAddress!, count: $0.count) }
    }

    /// Summarises `values` in consecutive blocks of `sizes` (cycled), folded in order.
    func blocked(_ values: [Double], sizes: [Int]) -> Moments {
        var total = Moments()
        var start = 0, k = 0
        while start < values.count {
            let n = min(sizes[k % sizes.count], values.count - start)
            total.combine(moments(Array(values[start..<start + n])))
            start += n
            k += 1
        }
        return total
    }

    /// Plain two-pass reference: mean, then central sums.
    func reference(_ values: [Double]) -> (mean: Double, m2: Double, m3: Double, m4: Double) {
        let mean = values.reduce(0, +) / Double(values.count)
        var m2 = 0.0, m3 = 0.0, m4 = 0.0
        for x in values {
            let d = x - mean
            m2 += d * d; m3 += d * d * d; m4 += d * d * d * d
        }
        return (mean, m2, m3, m4)
    }

    /// Deterministic pseudo-random values (xorshift), skewed so every moment is non-trivial.
    func sample(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [Double] {
        var state = seed
        return (0..<count).map { _ in
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            let u = Double(state >> 11) * 0x1p-53
            return 0.02 * (u * u * 3 - 1) + 0.001
        }
    }

    @Test func combiningBlocksEqualsOnePass() {
        let values = sample(20_000)
        let whole = moments(values)
        let ref = reference(values)
        #expect(close(whole.mean, ref.mean, rel: 1e-13))
        for m in [whole, blocked(values, sizes: [Partition.blockElements]), blocked(values, sizes: [1, 7, 4096, 333, 2]),
                  blocked(values, sizes: [1])] {
            #expect(m.n == 20_000)
            #expect(close(m.mean, ref.mean, rel: 1e-12))
            #expect(close(m.m2, ref.m2, rel: 1e-12))
            #expect(close(m.m3, ref.m3, rel: 1e-9))
            #expect(close(m.m4, ref.m4, rel: 1e-12))
            #expect(m.min == values.min()! && m.max == values.max()!)
            #expect(close(m.absSum, values.reduce(0) { $0 + $1.magnitude }, rel: 1e-12))
        }
    }

    @Test func combiningIsAssociativeAndHasAnIdentity() {
        let a = moments(sample(100, seed: 1)), b = moments(sample(37, seed: 2)), c = moments(sample(4096, seed: 3))
        var left = a; left.combine(b); left.combine(c)
        var bc = b; bc.combine(c)
        var right = a; right.combine(bc)
        #expect(left.n == right.n && close(left.mean, right.mean, rel: 1e-14) && close(left.m2, right.m2, rel: 1e-12))
        #expect(close(left.m3, right.m3, rel: 1e-9) && close(left.m4, right.m4, rel: 1e-12))
        var empty = Moments(); empty.combine(a)
        #expect(empty == a)
        var same = a; same.combine(Moments())
        #expect(same == a)
    }

    @Test func nonFiniteValuesAreCountedApart() {
        let m = moments([1, .nan, 2, .infinity, 0, -.infinity, 3, .nan, -0.0])
        #expect(m.nan == 2 && m.inf == 2 && m.zeros == 2 && m.n == 5)
        #expect(m.finiteMean == 1.2 && m.finiteMin == 0 && m.finiteMax == 3)
        #expect(close(m.std!, (((1 - 1.2) * (1 - 1.2) + 0.64 + 1.44 * 2 + 3.24) / 5).squareRoot(), rel: 1e-15))
        #expect(m.absMean == 1.2)
        #expect(close(m.l2Norm!, 14.0.squareRoot(), rel: 1e-15))
    }

    @Test func noFiniteValuesMeansNoMoments() {
        for values in [[Double.nan, .nan], [.infinity, -.infinity, .nan], []] {
            let m = moments(values)
            #expect(m.n == 0)
            #expect(m.finiteMean == nil && m.std == nil && m.finiteMin == nil && m.finiteMax == nil)
            #expect(m.absMean == nil && m.l2Norm == nil && m.skewness == nil && m.excessKurtosis == nil)
        }
        #expect(moments([.nan, .nan, .infinity]).nan == 2)
    }

    @Test func singleElement() {
        let m = moments([-2.75])
        #expect(m.finiteMean == -2.75 && m.std == 0 && m.finiteMin == -2.75 && m.absMean == 2.75 && m.l2Norm == 2.75)
        #expect(m.skewness == nil && m.excessKurtosis == nil)
    }

    @Test(arguments: [0.1, 0.7, -3.3, 1e6 + 0.1, 1e-300])
    func constantValuesHaveZeroSpread(value: Double) {
        for count in [2, 3, 1000, 10_000] {
            let values = [Double](repeating: value, count: count)
            for m in [moments(values), blocked(values, sizes: [4096]), blocked(values, sizes: [3, 5])] {
                #expect(m.finiteMean == value, "\(value) × \(count)")
                #expect(m.std == 0, "\(value) × \(count)")
                #expect(m.skewness == nil && m.excessKurtosis == nil, "\(value) × \(count)")
            }
        }
    }

    /// 1e6 plus multiples of 2⁻¹⁰: exact in binary, so the true moments are known exactly.
    @Test func valuesFarFromZeroWithTinySpread() {
        let u = 0x1p-10
        let symmetric = (0..<20_000).map { 1e6 + [-3.0, -1, 1, 3][$0 % 4] * u }
        let skewed = (0..<20_000).map { 1e6 + [0.0, 0, 0, 4][$0 % 4] * u }
        for m in [moments(symmetric), blocked(symmetric, sizes: [Partition.blockElements]), blocked(symmetric, sizes: [999])] {
            #expect(close(m.mean, 1e6, rel: 1e-15))
            #expect(close(m.std!, 5.0.squareRoot() * u, rel: 1e-9))
            #expect(m.skewness!.magnitude < 1e-6)
            #expect(close(m.excessKurtosis!, 41.0 / 25 - 3, rel: 1e-6))
        }
        for m in [moments(skewed), blocked(skewed, sizes: [Partition.blockElements]), blocked(skewed, sizes: [999])] {
            #expect(close(m.mean, 1e6 + u, rel: 1e-15))
            #expect(close(m.std!, 3.0.squareRoot() * u, rel: 1e-9))
            #expect(close(m.skewness!, 6 / (3 * 3.0.squareRoot()), rel: 1e-6))
            #expect(close(m.excessKurtosis!, 21.0 / 9 - 3, rel: 1e-6))
        }
        // One block: the first-pass mean's rounding is corrected, so the result is essentially exact.
        let one = moments(Array(skewed.prefix(4096)))
        #expect(close(one.skewness!, 6 / (3 * 3.0.squareRoot()), rel: 1e-12))
    }

    @Test func finiteValuesWhoseSumOverflows() {
        let twice = moments([1e308, 1e308])
        #expect(twice.finiteMean == 1e308 && twice.std == 0 && twice.finiteMax == 1e308)
        let many = blocked([Double](repeating: 1.5e308, count: 10_000), sizes: [4096])
        #expect(many.finiteMean == 1.5e308 && many.std == 0)
        let mixed = moments([1e308, -1e308, 1e308, -1e308, 0])
        #expect(mixed.finiteMean == 0 && mixed.finiteMin == -1e308 && mixed.finiteMax == 1e308 && mixed.zeros == 1)
        #expect(mixed.std == .infinity)  // 1e308 is the true std, but Σd² does not fit a Double
        let withNaN = moments([1e308, .nan, 1e308, 1e308])
        #expect(withNaN.nan == 1 && withNaN.finiteMean == 1e308)
        let halves = blocked((0..<8192).map { $0 < 4096 ? 1e308 : -1e308 }, sizes: [4096])
        #expect(halves.finiteMean == 0)
    }

    /// Finite sums whose squares overflow (|x| past 1e154, fourth powers past 1e77): the std is
    /// right when M2 fits a Double, ∞ (`null`) when it does not, never 0, in any order; the
    /// scope part agrees.
    @Test func finiteValuesWhosePowersOverflow() {
        for values in [[1e200, -1e200, 3e199], [3e199, 1e200, -1e200]] {
            let m = moments(values)
            #expect(m.std == .infinity && m.finiteMean! > 9.9e198 && m.finiteMean! < 1.01e199, "\(values): \(m)")
            let scope = values.withUnsafeBufferPointer { ScopeMoments(values: $0.baseAddress!, count: $0.count) }.scope
            #expect(scope.std == .infinity, "\(values)")
        }
        // numpy: std 8.286535263104036e99; M4 ≈ 1e400 does not fit, so the kurtosis is not finite.
        let representable = moments([1e100, -1e100, 3e99])
        #expect(abs(representable.std! / 8.286535263104036e99 - 1) < 1e-15)
        #expect(representable.skewness?.isFinite == true && representable.excessKurtosis?.isFinite != true)
    }

    /// `ScopeMoments` (WSA's measure pass) gives `Moments`' count, mean and M2 bit for bit, on
    /// its fast path, on the careful paths and folded over blocks, from doubles and from BF16.
    @Test func scopeMomentsEqualMoments() {
        var rng = SplitMix(seed: 5)
        func uniform() -> Double { Double(rng.next() >> 11) * 0x1p-53 - 0.5 }
        let sets: [[Double]] = [
            (0..<10_001).map { _ in uniform() * 0.04 + 0.01 },
            (0..<999).map { _ in 1e6 + uniform() * 1e-3 },
            [Double](repeating: 0.3, count: 77),
            (0..<513).map { i in i == 100 ? .nan : (i == 200 ? -.infinity : uniform()) },
            (0..<300).map { _ in uniform() * 1e308 },
            [],
        ]
        for values in sets {
            var full = Moments(), scope = ScopeMoments()
            var start = 0
            for size in [1, 4096, 17, 4096, 4096, 5000] where start < values.count {
                let n = min(size, values.count - start)
                values.withUnsafeBufferPointer { buffer in
                    full.combine(Moments(values: buffer.baseAddress! + start, count: n))
                    scope.combine(ScopeMoments(values: buffer.baseAddress! + start, count: n))
                }
                start += n
            }
            #expect(scope.n == full.n && scope.mean.bitPattern == full.mean.bitPattern && scope.m2.bitPattern == full.m2.bitPattern,
                    "\(values.prefix(3)): \(scope) vs \(full)")
            #expect(scope.nan == full.nan && scope.inf == full.inf)
        }
        // From stored BF16 elements, decoded on the way.
        let bf16 = (0..<4099).map { _ in UInt16(Float(uniform() * 0.1).bitPattern >> 16) }
        let decoded = bf16.map { Double(Float(bitPattern: UInt32($0) << 16)) }
        var scratch = [Double](repeating: 0, count: bf16.count)
        let stored = bf16.withUnsafeBytes { raw in
            ScopeMoments(elements: raw.baseAddress!, kind: Int32(WSK_BF16), count: bf16.count, scratch: &scratch)
        }
        let full = decoded.withUnsafeBufferPointer { Moments(values: $0.baseAddress!, count: $0.count) }
        #expect(stored?.mean == full.mean && stored?.m2 == full.m2 && scratch == decoded)
    }

    @Test func statisticsDoNotDependOnJobs() throws {
        let values = sample(300_000).map { Float($0) }  // more than one 262,144-element chunk
        let data = values.flatMap { Bytes.le($0) }
        let path = try Bytes.temporaryFile(Bytes.safetensors(#"{"w":{"dtype":"F32","shape":[300000],"data_offsets":[0,\#(data.count)]}}"#, data: data), name: "m.safetensors")
        defer { Bytes.removeDirectory(of: path) }
        let checkpoint = try CheckpointReader.open(path)
        let one = try StatisticsRun.measure(checkpoint, filter: .all, jobs: 1)[0].moments!
        for jobs in [2, 3, 8] {
            #expect(try StatisticsRun.measure(checkpoint, filter: .all, jobs: jobs)[0].moments! == one)
        }
        let ref = reference(values.map(Double.init))
        #expect(close(one.mean, ref.mean, rel: 1e-12) && close(one.m2, ref.m2, rel: 1e-12))
    }
}
