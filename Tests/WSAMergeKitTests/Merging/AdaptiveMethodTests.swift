import Foundation
import Testing
@testable import WSAMergeKit

/// The adaptive methods on tensors larger than the selection limit and the block size: the radix
/// path of `Selection` (`limitOverride`) gives the same bytes as the in-memory one, every `jobs`
/// gives the same bytes, and both agree with a direct in-memory implementation of METHODS.md.
@Suite struct AdaptiveMethodTests {
    static let name = "model.layers.0.mlp.up_proj.weight"

    /// A one-tensor F64 safetensors file of shape `shape`.
    static func file(_ values: [Double], shape: [Int]) throws -> String {
        let header = "{\"\(name)\":{\"dtype\":\"F64\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[0,\(values.count * 8)]}}"
        return try Bytes.temporaryFile(Bytes.safetensors(header, data: values.flatMap { Bytes.le($0) }), name: "m.safetensors")
    }

    /// Merges with `strategy` into F64 and returns the output tensor and the tensor's report.
    static func merge(_ strategy: String, base: String, inputs: [String], parameters: [(String, String)] = [],
                      jobs: Int, limit: Int? = nil) throws -> (values: [Double], report: JSON) {
        let out = NSTemporaryDirectory() + "adaptive-\(UUID().uuidString).safetensors"
        defer { try? FileManager.default.removeItem(atPath: out) }
        var request = Merger.Request(inputs: inputs, strategy: strategy, output: OutputOptions(path: out, layout: .safetensors))
        request.base = base
        request.dtype = .F64
        request.jobs = jobs
        let declaration = try #require(Strategies.named(strategy)).declaration
        for (key, value) in parameters { try request.parameters.assign(key, words: [value], for: declaration) }
        let report = try Selection.$limitOverride.withValue(limit) { try Merger.run(request) }
        let merged = try CheckpointReader.open(out)
        let index = try #require(merged.index(of: name))
        let bytes = try merged.reader(for: index).readAll()
        let values = bytes.withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }
        let tensor = report.json["tensors"]?.arrayValue?.first { $0["name"]?.stringValue == name }
        return (values, try #require(tensor))
    }

    /// The first index where `a` and `b` differ in their bits (or their lengths differ).
    static func firstDifference(_ a: [Double], _ b: [Double]) -> Int? {
        guard a.count == b.count else { return min(a.count, b.count) }
        return a.indices.first { a[$0].bitPattern != b[$0].bitPattern }
    }

    /// Runs `body` with every combination of jobs 1/2 and the in-memory/radix selection, and
    /// expects the same values each time; returns them.
    static func sameEverywhere(_ body: (_ jobs: Int, _ limit: Int?) throws -> [Double]) throws -> [Double] {
        let first = try body(1, nil)
        for (jobs, limit) in [(2, nil), (1, 64), (2, 64)] as [(Int, Int?)] {
            let other = try body(jobs, limit)
            #expect(firstDifference(other, first) == nil, "jobs \(jobs), limit \(String(describing: limit))")
        }
        return first
    }

    /// Rows where c is b moved by ~1e-12 (F64): their KL is rounding noise of either sign, so
    /// many importances are below 0 (and −0 where c = b in such a row); other rows move a lot.
    @Test func arceeFusionQuantilesAreExactAtAnySize() throws {
        let rows = 300, length = 40, count = rows * length
        var rng = SplitMix(seed: 7)
        var b = [Double](), c = [Double]()
        for r in 0..<rows {
            for j in 0..<length {
                let x = Double.random(in: -1...1, using: &rng)
                b.append(x)
                switch r % 5 {
                case 0: c.append(j % 8 == 0 ? x : x + Double.random(in: -1e-12...1e-12, using: &rng))
                case 1, 2, 3: c.append(x + Double.random(in: -1e-12...1e-12, using: &rng))
                default: c.append(j % 5 == 0 ? x + Double.random(in: -0.5...0.5, using: &rng) : x)
                }
            }
        }
        let basePath = try Self.file(b, shape: [rows, length]), otherPath = try Self.file(c, shape: [rows, length])
        defer { Bytes.removeDirectory(of: basePath); Bytes.removeDirectory(of: otherPath) }

        // METHODS.md directly: every importance in memory, sorted.
        // The row's KL in the order of operations wsamerge documents (softmax with the row's
        // maximum subtracted, sums in order), so the importances agree to the bit.
        func divergence(_ c: ArraySlice<Double>, _ b: ArraySlice<Double>) -> Double {
            let ec = c.map { exp($0 - c.max()!) }, eb = b.map { exp($0 - b.max()!) }
            let zc = ec.reduce(0, +), zb = eb.reduce(0, +)
            var kl = 0.0
            for (x, y) in zip(ec, eb) {
                let p = x / zc + 1e-8, q = y / zb + 1e-8
                kl += p * log(p / q)
            }
            return kl
        }
        var imp = [Double](repeating: 0, count: count)
        for r in 0..<rows {
            let row = r * length..<(r + 1) * length
            let kl = divergence(c[row], b[row])
            for j in row { imp[j] = abs(c[j] - b[j]) * kl }
        }
        // q1 falls among the negative importances, the median among the others.
        #expect(imp.filter { $0 < 0 }.count > Int(0.25 * Double(count - 1)), "the test needs negative importances")
        #expect(imp.filter { $0 < 0 }.count <= Int(0.5 * Double(count - 1)))
        let sorted = imp.sorted()
        func quantile(_ q: Double) -> Double { sorted[Int(q * Double(count - 1))] }
        let threshold = quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25))
        let expected = (0..<count).map { b[$0] + (c[$0] - b[$0]) * (imp[$0] >= threshold ? 1 : 0) }

        let merged = try Self.sameEverywhere { jobs, limit in
            let (values, report) = try Self.merge("arcee_fusion", base: basePath, inputs: [otherPath], jobs: jobs, limit: limit)
            #expect(report["threshold"]?.doubleValue == threshold)
            return values
        }
        #expect(Self.firstDifference(merged, expected) == nil)
    }

    /// Variances on a coarse grid (many exact ties at the cut-off, across blocks) and a cut-off
    /// that falls inside a run of equal variances.
    @Test func sceSelectionIsExactAtAnySize() throws {
        let count = 3 * Partition.blockElements + 123, n = 3
        var rng = SplitMix(seed: 11)
        let b = (0..<count).map { _ in Double(Int.random(in: -8...8, using: &rng)) / 16 }
        let xs = (0..<n).map { _ in b.map { $0 + Double(Int.random(in: -2...2, using: &rng)) / 8 } }
        let basePath = try Self.file(b, shape: [count])
        let paths = try xs.map { try Self.file($0, shape: [count]) }
        defer { for p in [basePath] + paths { Bytes.removeDirectory(of: p) } }
        let topk = 0.37

        // METHODS.md directly.
        let deltas = xs.map { x in (0..<count).map { x[$0] - b[$0] } }
        let variance = (0..<count).map { j -> Double in
            var sum = 0.0
            for k in 0..<n { sum += deltas[k][j] }
            let mean = sum / Double(n)
            var squares = 0.0
            for k in 0..<n { squares += (deltas[k][j] - mean) * (deltas[k][j] - mean) }
            return squares / Double(n)
        }
        let k = Int(topk * Double(variance.filter { $0 != 0 }.count))
        let order = (0..<count).sorted { variance[$0] > variance[$1] || (variance[$0] == variance[$1] && $0 < $1) }
        var selected = [Bool](repeating: false, count: count)
        for j in order.prefix(k) { selected[j] = true }
        #expect(variance[order[k - 1]] == variance[order[k]], "the cut-off should fall inside a tie")
        let d = deltas.map { delta in (0..<count).map { selected[$0] ? delta[$0] : 0 } }
        var omega = d.map { v in v.reduce(0) { $0 + $1 * $1 } / Double(count) }
        let total = omega.reduce(0, +)
        omega = omega.map { $0 / total }
        let expected = (0..<count).map { j -> Double in
            let s = d.reduce(0) { $0 + $1[j] }
            var mixed = 0.0, divisor = 0.0
            for i in 0..<n where s >= 0 ? d[i][j] > 0 : d[i][j] < 0 {
                mixed += omega[i] * d[i][j]
                divisor += omega[i]
            }
            return b[j] + mixed / max(divisor, 1e-6)
        }

        let merged = try Self.sameEverywhere { jobs, limit in
            let (values, report) = try Self.merge("sce", base: basePath, inputs: paths, parameters: [("select_topk", "\(topk)")],
                                                  jobs: jobs, limit: limit)
            #expect(report["selected"]?.doubleValue == Double(k) / Double(count))
            return values
        }
        // The weights are sums in another order than here: within a few ulp.
        let far = (0..<count).first { !close(merged[$0], expected[$0], rel: 1e-14) }
        #expect(far == nil, "element \(far ?? 0): \(merged[far ?? 0]) vs \(expected[far ?? 0])")

        // Bracketed from a sample (whose share of zero variances only estimates k), with the
        // default margin and with none (the cut-off then misses its bracket): the same bytes.
        for margin in [nil, 0] as [Int?] {
            let sampled = try Selection.$wholeOverride.withValue(1) {
                try Selection.$marginOverride.withValue(margin) {
                    try Self.merge("sce", base: basePath, inputs: paths, parameters: [("select_topk", "\(topk)")], jobs: 2).values
                }
            }
            #expect(Self.firstDifference(sampled, merged) == nil, "margin \(margin.map(String.init) ?? "default")")
        }
    }

    /// Nonzero variances only between the sample's runs (runs of 39 elements every 156 in a
    /// tensor of 40 000): the sample sees none, so its estimate of k is far off, and the count
    /// of zeros from the scan decides k (the cut-off then misses its bracket).
    @Test func sceCountsZeroVariancesInTheScan() throws {
        let count = 40_000, n = 2
        var rng = SplitMix(seed: 5)
        let b = (0..<count).map { _ in Double.random(in: -1...1, using: &rng) }
        let moved = { (j: Int) in j % 156 >= 50 && j < count - 200 }
        let xs = (0..<n).map { k in (0..<count).map { j in b[j] + (moved(j) ? Double(k + 1) * Double(j % 7 + 1) / 64 : 0.25) } }
        let nonzero = (0..<count).filter(moved).count
        let basePath = try Self.file(b, shape: [count])
        let paths = try xs.map { try Self.file($0, shape: [count]) }
        defer { for p in [basePath] + paths { Bytes.removeDirectory(of: p) } }
        let whole = try Self.merge("sce", base: basePath, inputs: paths, parameters: [("select_topk", "0.5")], jobs: 2)
        #expect(whole.report["selected"]?.doubleValue == Double(nonzero / 2) / Double(count))
        let sampled = try Selection.$wholeOverride.withValue(1) {
            try Self.merge("sce", base: basePath, inputs: paths, parameters: [("select_topk", "0.5")], jobs: 2)
        }
        #expect(Self.firstDifference(sampled.values, whole.values) == nil)
        #expect(sampled.report["selected"] == whole.report["selected"])
    }

    @Test func ramPlusLiftsUniqueUpdates() throws {
        // Input 0 moves elements 0, 1, 2 (alone at 0 and 1), input 1 moves 2 and 3 (alone at 3).
        let b = [1.0, 1, 1, 1, 1]
        let x0 = [2.0, 3, 5, 1, 1], x1 = [1.0, 1, 3, 0, 1]
        let paths = try [b, x0, x1].map { try Self.file($0, shape: [5]) }
        defer { for p in paths { Bytes.removeDirectory(of: p) } }
        // ρ_0 = 1/2, ρ_1 = 1/1; λ = 1 + 0.5·clamp(ρ, 0, 0.75).
        let lambda = [1.25, 1.375]
        let values = try Self.sameEverywhere { jobs, _ in
            let (values, report) = try Self.merge("ramplus_tl", base: paths[0], inputs: Array(paths[1...]),
                                                  parameters: [("r", "0.5"), ("alpha", "0.75")], jobs: jobs)
            #expect(report["lambda"]?.arrayValue?.compactMap { $0.doubleValue } == lambda)
            #expect(report["unmoved"]?.doubleValue == 0.2)
            return values
        }
        #expect(values == [2.25, 3.5, 4, -0.375, 1])
        let plain = try Self.merge("ram", base: paths[0], inputs: Array(paths[1...]), jobs: 1).values
        #expect(plain == [2.0, 3.0, 4.0, 0.0, 1.0])
    }

    /// Where several inputs moved an element, ramplus_tl averages as ram does (Σδ / cnt, one
    /// division), to the bit: dividing each δ first differed in the last bit of many F64 results.
    @Test func ramPlusAveragesOverlapsAsRam() throws {
        var rng = SplitMix(seed: 41)
        let count = 4000
        let base = (0..<count).map { _ in Double(rng.next() >> 11) * 0x1p-53 - 0.5 }
        let models = [base] + (0..<3).map { _ in base.map { $0 + (Double(rng.next() >> 11) * 0x1p-53 - 0.5) * 0.1 } }
        let files = try models.map { try Self.file($0, shape: [count]) }
        let plus = try Self.merge("ramplus_tl", base: files[0], inputs: Array(files[1...]), jobs: 1).values
        let ram = try Self.merge("ram", base: files[0], inputs: Array(files[1...]), jobs: 1).values
        #expect(Self.firstDifference(plus, ram) == nil)
    }
}
