import Foundation
import Testing
@testable import WSAMergeKit

/// `Comparison`: the sums fold in block order (the same bits for every `jobs`), `changed` looks
/// at stored bytes (NaN payloads included), the top-magnitude sets are the exact top-k with ties
/// earliest in C order (also through the radix passes), and ratios over a zero norm are nil.
/// The quantities themselves are checked against numpy end to end (`CompareTests`).
@Suite struct ComparisonTests {
    /// A safetensors checkpoint of one-dimensional tensors, each given as stored bytes.
    static func checkpoint(_ tensors: [(name: String, dtype: String, count: Int, bytes: [UInt8])]) throws -> Checkpoint {
        var header: [String] = []
        var data: [UInt8] = []
        for t in tensors {
            header.append(#""\#(t.name)":{"dtype":"\#(t.dtype)","shape":[\#(t.count)],"data_offsets":[\#(data.count),\#(data.count + t.bytes.count)]}"#)
            data += t.bytes
        }
        let path = try Bytes.temporaryFile(Bytes.safetensors("{" + header.joined(separator: ",") + "}", data: data), name: "m.safetensors")
        return try CheckpointReader.open(path)
    }

    static func f64(_ values: [Double]) -> [UInt8] { values.flatMap { Bytes.le($0) } }
    static func f32(bits: [UInt32]) -> [UInt8] { bits.flatMap { Bytes.le($0) } }

    /// Deterministic pseudo-random values with many ties: multiples of 1/16 in [−0.5, 0.5].
    static func values(_ count: Int, seed: UInt64) -> [Double] {
        var rng = SplitMix(seed: seed)
        return (0..<count).map { _ in Double(Int(rng.next() % 17) - 8) / 16 }
    }

    @Test func sumsAreTheSameForEveryJobs() throws {
        // Two chunks, not a multiple of the block size.
        let count = Partition.chunkElements + 4321
        let models = try (0..<3).map { k in
            try Self.checkpoint([("model.layers.0.w", "F64", count, Self.f64(Self.values(count, seed: UInt64(k + 1)).map { $0 + 0.01 * Double(k) }))])
        }
        defer { models.forEach { Bytes.removeDirectory(of: $0.path) } }
        let plain = try Comparison(models, filter: .all, jobs: 1).json(layers: true)
        let overBase = try Comparison(Array(models.dropFirst()), base: models[0], density: 0.3, filter: .all, jobs: 1).json(layers: true)
        for jobs in [2, 5] {
            #expect(try Comparison(models, filter: .all, jobs: jobs).json(layers: true).text == plain.text)
            #expect(try Comparison(Array(models.dropFirst()), base: models[0], density: 0.3, filter: .all, jobs: jobs)
                .json(layers: true).text == overBase.text)
        }
    }

    @Test func changedComparesStoredBytesIncludingNaNPayloads() throws {
        // sNaN vs the qNaN it decodes to, equal NaNs, NaNs of opposite sign, -0 vs +0, 1 vs 1.
        let a: [UInt32] = [0x7F80_0001, 0x7FC0_0000, 0x7FC0_0000, 0x8000_0000, 0x3F80_0000]
        let b: [UInt32] = [0x7FC0_0001, 0x7FC0_0000, 0xFFC0_0000, 0x0000_0000, 0x3F80_0000]
        let x = try Self.checkpoint([("w", "F32", 5, Self.f32(bits: a))])
        let y = try Self.checkpoint([("w", "F32", 5, Self.f32(bits: b))])
        // The same values as F64: the dtypes differ, so decoded values compare (NaN equals NaN, -0 equals 0).
        let z = try Self.checkpoint([("w", "F64", 5, Self.f64([.nan, .nan, -.nan, 0, 1]))])
        defer { [x, y, z].forEach { Bytes.removeDirectory(of: $0.path) } }
        let m = Comparison.Metrics(try Comparison([x, y, z], filter: .all, jobs: 2).rows[0].sums)
        #expect(m.pairs.map(\.changed) == [3, 0])
        #expect(m.nonfinite == 3)
        #expect(m.pairs[0].maxAbsDiff == 0)
    }

    /// The top sets by brute force: indices sorted by descending key, ties in C order.
    static func topSet(_ keys: [Double], k: Int) -> Set<Int> {
        Set(keys.indices.sorted { keys[$0] != keys[$1] ? keys[$0] > keys[$1] : $0 < $1 }.prefix(k))
    }

    @Test(arguments: [nil, 3000])
    func overlapUsesTheExactTopKWithCOrderTies(limit: Int?) throws {
        let count = Partition.blockElements * 5 + 77
        let base = Self.values(count, seed: 11)
        let inputs = (0..<3).map { k in zip(base, Self.values(count, seed: UInt64(20 + k))).map { $0 + $1 / 4 } }
        let models = try ([base] + inputs).map { try Self.checkpoint([("w", "F64", count, Self.f64($0))]) }
        defer { models.forEach { Bytes.removeDirectory(of: $0.path) } }
        let density = 0.37
        let comparison = try Selection.$limitOverride.withValue(limit) {
            try Comparison(Array(models.dropFirst()), base: models[0], density: density, filter: .all, jobs: 3)
        }
        let m = Comparison.Metrics(comparison.rows[0].sums)
        let k = Int((density * Double(count)).rounded(.down))
        let sets = inputs.map { x in
            let deltas = zip(x, base).map { $0 - $1 }
            return Self.topSet(deltas.map(\.magnitude), k: k).filter { deltas[$0] != 0 }
        }
        var expected: [Double] = []
        for i in 0..<3 { for j in (i + 1)..<3 { expected.append(Double(sets[i].intersection(sets[j]).count) / Double(sets[i].union(sets[j]).count)) } }
        #expect(m.pairs.map(\.overlap) == expected)
        // Sign conflicts by brute force.
        let conflicts = (0..<count).filter { e in
            let d = inputs.map { $0[e] - base[e] }
            return d.contains { $0 > 0 } && d.contains { $0 < 0 }
        }.count
        #expect(m.signConflict == Double(conflicts) / Double(count))
    }

    @Test func zeroNormsGiveNil() throws {
        let zero = try Self.checkpoint([("w", "F64", 4, Self.f64([0, 0, 0, 0]))])
        let one = try Self.checkpoint([("w", "F64", 4, Self.f64([1, -2, 0, 3]))])
        defer { [zero, one].forEach { Bytes.removeDirectory(of: $0.path) } }
        let plain = Comparison.Metrics(try Comparison([zero, one], filter: .all, jobs: 1).rows[0].sums)
        #expect(plain.pairs[0].cosine == nil && plain.pairs[0].relL2 == nil)
        #expect(plain.pairs[0].maxAbsDiff == 3 && plain.pairs[0].changed == 3)
        // Over a zero base: rel_norm is nil; an input equal to the base has no task vector.
        let tv = Comparison.Metrics(try Comparison([one, zero], base: zero, filter: .all, jobs: 1).rows[0].sums)
        #expect(tv.taskVectors.map(\.relNorm) == [nil, nil])
        #expect(tv.taskVectors.map(\.norm) == [Double(14).squareRoot(), 0])
        #expect(tv.pairs[0].cosine == nil && tv.pairs[0].overlap == 0)
        #expect(tv.signConflict == 0)
        // Identical inputs: cosine 1, nothing changed.
        let same = Comparison.Metrics(try Comparison([one, one], filter: .all, jobs: 1).rows[0].sums)
        #expect(same.pairs[0].cosine == 1 && same.pairs[0].relL2 == 0 && same.pairs[0].changed == 0)
    }

    @Test func sortPutsTheMostDifferentFirst() throws {
        let a = try Self.checkpoint([("x", "F64", 2, Self.f64([1, 1])), ("y", "F64", 2, Self.f64([1, 1]))])
        let b = try Self.checkpoint([("x", "F64", 2, Self.f64([1, 1.1])), ("y", "F64", 2, Self.f64([-1, -1]))])
        defer { [a, b].forEach { Bytes.removeDirectory(of: $0.path) } }
        var c = try Comparison([a, b], filter: .all, jobs: 1)
        c.sort(by: .cosine)
        #expect(c.rows.map(\.name) == ["y", "x"])
        c.sort(by: .changed)
        #expect(c.rows.map(\.name) == ["y", "x"])
    }

    @Test func layersPoolTheSums() throws {
        let a = try Self.checkpoint([("layers.0.p", "F64", 2, Self.f64([3, 0])), ("layers.0.q", "F64", 1, Self.f64([4])),
                                     ("head", "F64", 1, Self.f64([1]))])
        let b = try Self.checkpoint([("layers.0.p", "F64", 2, Self.f64([3, 1])), ("layers.0.q", "F64", 1, Self.f64([4])),
                                     ("head", "F64", 1, Self.f64([2]))])
        defer { [a, b].forEach { Bytes.removeDirectory(of: $0.path) } }
        let layers = try Comparison([a, b], filter: .all, jobs: 1).layers
        #expect(layers.map(\.layer) == [0] && layers[0].tensorCount == 2)
        let m = Comparison.Metrics(layers[0].sums)
        #expect(m.pairs[0].relL2 == 1.0 / 5 && m.pairs[0].changed == 1 && m.count == 3)
    }
}
