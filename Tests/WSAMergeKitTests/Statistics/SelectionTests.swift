import CKernels
import Foundation
import Testing
@testable import WSAMergeKit

/// `Selection` against sorting, on keys with many ties, with and without radix passes.
@Suite struct SelectionTests {
    /// A key pass over one F64 tensor of `values` (keys are the values themselves, ≥ 0).
    func pass(_ values: [Double]) throws -> (KeyPass, String) {
        let dir = NSTemporaryDirectory() + "sel-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/k.safetensors"
        let header = "{\"k\":{\"dtype\":\"F64\",\"shape\":[\(values.count)],\"data_offsets\":[0,\(values.count * 8)]}}"
        var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) } + Array(header.utf8)
        for v in values { bytes += withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let checkpoint = try CheckpointReader.open(path)
        return (KeyPass(readers: { [try checkpoint.reader(for: 0)] }, count: values.count, jobs: 2, keys: { inputs, count, keys, _ in
            keys.update(from: inputs[0], count: count)
        }), dir)
    }

    @Test(arguments: [1 << 30, 50, 3])
    func ranksMatchSorting(limit: Int) throws {
        var g = SystemRandomNumberGenerator()
        // Quantised magnitudes: many exact ties, zeros, one infinity.
        var values = (0..<10_000).map { _ in Double(Int.random(in: 0..<300, using: &g)) * 0.125 }
        values[17] = .infinity
        let (keys, dir) = try pass(values)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sorted = values.sorted()
        try Selection.$limitOverride.withValue(limit) {
            for position in [0, 1, 4999, 9998, 9999] {
                let rank = try Selection.ranks([[position]], of: keys)[0][0]
                #expect(rank.value == sorted[position])
                #expect(rank.less == sorted.firstIndex(of: sorted[position])!)
                #expect(rank.equal == sorted.filter { $0 == sorted[position] }.count)
            }
            // The k largest, ties at the cut-off earliest first: exactly k kept.
            var window = try RankWindow.largest(1234, count: keys.count, cut: try Selection.ranks([[keys.count - 1234]], of: keys)[0][0])
            _ = try window.census(keys)
            // A cursor per block, as the passes use them.
            var cursor = window.cursor(at: 0)
            let kept = values.indices.filter { j in
                if j % Partition.blockElements == 0 { cursor = window.cursor(at: j) }
                return cursor.keeps(values[j])
            }
            #expect(kept.count == 1234)
            let order = values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }
            #expect(Set(kept) == Set(order.prefix(1234)))
        }
    }

    /// A pass's sample holds the keys of its evenly spread runs (the first at the start, the last
    /// at the end), whether the tensors are read in place with a `pread` per run (safetensors, a
    /// big-endian .npy swapped) or in order (a Fortran-ordered .npy): keys `|x − b|` of two tensors.
    @Test func sampleHoldsTheRunsKeys() throws {
        let (rows, columns) = (40, 50), count = rows * columns
        let x = (0..<count).map { Double($0) * 0.5 }, b = (0..<count).map { Double($0 % 7) }
        func le(_ values: [Double]) -> [UInt8] { values.flatMap(Bytes.le) }
        func be(_ values: [Double]) -> [UInt8] { values.flatMap { Array(Bytes.le($0).reversed()) } }
        /// C-order values stored in Fortran order (column by column).
        func fortran(_ values: [Double]) -> [Double] { (0..<count).map { i in values[(i % rows) * columns + i / rows] } }
        let header = "{\"t\":{\"dtype\":\"F64\",\"shape\":[\(rows),\(columns)],\"data_offsets\":[0,\(count * 8)]}}"
        let files = try [
            ("safetensors", Bytes.safetensors(header, data: le(x)), Bytes.safetensors(header, data: le(b))),
            ("npy", Bytes.npy("{'descr': '>f8', 'fortran_order': False, 'shape': (\(rows), \(columns)), }", data: be(x)),
             Bytes.npy("{'descr': '>f8', 'fortran_order': False, 'shape': (\(rows), \(columns)), }", data: be(b))),
            ("npy", Bytes.npy("{'descr': '<f8', 'fortran_order': True, 'shape': (\(rows), \(columns)), }", data: le(fortran(x))),
             Bytes.npy("{'descr': '<f8', 'fortran_order': True, 'shape': (\(rows), \(columns)), }", data: le(fortran(b)))),
        ].map { ext, xBytes, bBytes in
            (try CheckpointReader.open(try Bytes.temporaryFile(xBytes, name: "x.\(ext)")),
             try CheckpointReader.open(try Bytes.temporaryFile(bBytes, name: "b.\(ext)")))
        }
        defer { for (a, c) in files { Bytes.removeDirectory(of: a.path); Bytes.removeDirectory(of: c.path) } }
        let (runs, length) = (9, 13)
        let step = (count - length) / (runs - 1)
        let starts = (0..<runs).map { $0 == runs - 1 ? count - length : $0 * step }
        let expected = starts.flatMap { start in (start..<(start + length)).map { Swift.abs(x[$0] - b[$0]) } }
        for (xFile, bFile) in files {
            let pass = KeyPass(differences: { [try xFile.reader(for: 0), try bFile.reader(for: 0)] }, count: count, streams: 1, jobs: 2)
            #expect(try pass.sample(runs: runs, length: length) == [expected], "\(xFile.path)")
        }
    }

    /// Ranks bracketed from a sample (the whole-tensor size lowered), with brackets so narrow
    /// that most miss (margin 0: the radix fallback), several positions at once.
    @Test(arguments: [nil, 0, 2] as [Int?])
    func sampledBracketsMatchSorting(margin: Int?) throws {
        var g = SystemRandomNumberGenerator()
        var values = (0..<10_000).map { _ in Double(Int.random(in: 0..<300, using: &g)) * 0.125 }
        // A run of zeros and a block of large keys the sample may not see.
        for j in 2000..<2600 { values[j] = 0 }
        for j in 9000..<9050 { values[j] = 1000 + Double(j) }
        let (keys, dir) = try pass(values)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sorted = values.sorted()
        let positions = [0, 1, 599, 600, 4999, 5000, 9949, 9950, 9999]
        let ranks = try Selection.$wholeOverride.withValue(1) {
            try Selection.$marginOverride.withValue(margin) { try Selection.ranks([positions], of: keys) }
        }
        for (position, rank) in zip(positions, ranks[0]) {
            #expect(rank.value == sorted[position], "position \(position)")
            #expect(rank.less == sorted.firstIndex(of: sorted[position])!)
            #expect(rank.equal == sorted.filter { $0 == sorted[position] }.count)
            if let before = rank.equalBefore {
                // Equal keys before each block, counted in C order.
                let block = Partition.blockElements
                for b in before.indices.dropLast() {
                    #expect(before[b] == values[0..<Swift.min(values.count, b * block)].filter { $0 == sorted[position] }.count)
                }
            }
        }
    }

    /// The samples' radix sort (`wsk_sort_u64`) orders like `sorted()`: empty, one key, many
    /// equal keys, keys that differ only in their low or only in their high bytes.
    @Test func sampleSortMatchesSorted() {
        var g = SystemRandomNumberGenerator()
        let cases: [[UInt64]] = [
            [], [42], [UInt64](repeating: 7, count: 100),
            (0..<5000).map { _ in UInt64.random(in: 0...UInt64.max, using: &g) },
            (0..<5000).map { _ in 0x3F50_0000_0000_0000 | UInt64.random(in: 0..<4096, using: &g) },
            (0..<5000).map { _ in UInt64.random(in: 0..<8, using: &g) << 56 | 0x1234 },
            (0..<16384).map { _ in Selection.bits(Double(Int.random(in: 0..<300, using: &g)) * 0.125) },
        ]
        for keys in cases {
            var sorted = keys, scratch = keys
            wsk_sort_u64(&sorted, sorted.count, &scratch)
            let same = sorted == keys.sorted()  // a Bool, so a failure does not print the arrays
            #expect(same, "\(keys.count) keys")
        }
    }

    /// One scan with a bracket whose ends are tied keys: every position below, at either end,
    /// inside and above resolves as sorting says, or is reported missed (nil) outside.
    @Test func bracketResolvesEveryPosition() throws {
        var g = SystemRandomNumberGenerator()
        let values = (0..<6_000).map { _ in Double(Int.random(in: 0..<40, using: &g)) }
        let (keys, dir) = try pass(values)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sorted = values.sorted()
        let bracket = Selection.Bracket(stream: 0, lo: Selection.bits(10), hi: Selection.bits(20), positions: [])
        let scan = try Selection.scan([bracket], of: keys)[0]
        for position in sorted.indices {
            let rank = scan.rank(at: position)
            guard sorted[position] >= 10 && sorted[position] <= 20 else {
                #expect(rank == nil, "position \(position)")
                continue
            }
            let value = sorted[position]
            #expect(rank?.value == value)
            #expect(rank?.less == sorted.firstIndex(of: value)!)
            #expect(rank?.equal == sorted.filter { $0 == value }.count)
            #expect(rank?.equalBefore?.last == sorted.filter { $0 == value }.count)
        }
    }

    /// `wsk_rank_inside` at every rank of keys in three blocks (ties across blocks) gives the
    /// sorted key, how many are below it and its equal keys per block; past the last rank it
    /// reports no key instead of reading past its tables.
    @Test func rankInsideGivesEveryRankAndNoneBeyond() {
        let blocks: [[UInt64]] = [[5, 3, 9, 3], [], [3, 7, 5, 5, 1]]
        let keys = blocks.flatMap { $0 }, sorted = keys.sorted()
        var scratch = [UInt64](repeating: 0, count: 2 * keys.count + 1)
        for k in 0...(keys.count + 2) {
            var less: Int64 = 0
            var before = [Int64](repeating: -1, count: blocks.count + 1)
            let key = wsk_rank_inside(keys, blocks.map(\.count), blocks.count, k, &less, &before, &scratch)
            if k >= keys.count {
                #expect(key == .max && less == Int64(keys.count) && before.allSatisfy { $0 == 0 }, "rank \(k)")
                continue
            }
            #expect(key == sorted[k], "rank \(k)")
            #expect(less == Int64(sorted.firstIndex(of: key)!))
            var counted: [Int64] = [0]
            for block in blocks { counted.append(counted.last! + Int64(block.filter { $0 == key }.count)) }
            #expect(before == counted, "rank \(k)")
        }
    }
}
