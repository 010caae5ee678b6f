import Testing
@testable import WSAMergeKit

/// Fortran-ordered `.npy` arrays: served in C order, transposed whole up to
/// `TransposedStream.maxBytes` and a block of axis 0 at a time beyond it, and read as stored,
/// whatever their size, by the passes that take any order (statistics, scopes).
@Suite struct FortranOrderTests {
    /// A 3 × 5 float64 array whose values are distinct, stored column-major, with the same
    /// array's C-order bytes.
    static func arrays() -> (fortran: [UInt8], cOrder: [Double]) {
        let rows = 3, columns = 5
        let value = { (i: Int, j: Int) in Double(i * 10 + j) * 0.25 - 1 }
        var stored: [UInt8] = []
        for j in 0..<columns { for i in 0..<rows { stored += Bytes.le(value(i, j)) } }
        let cOrder = (0..<rows).flatMap { i in (0..<columns).map { j in value(i, j) } }
        return (Bytes.npy("{'descr': '<f8', 'fortran_order': True, 'shape': (3, 5), }", data: stored), cOrder)
    }

    @Test func statisticsReadOverTheTransposeLimit() throws {
        let (file, cOrder) = Self.arrays()
        let path = try Bytes.temporaryFile(file, name: "f.npy")
        defer { Bytes.removeDirectory(of: path) }
        let checkpoint = try CheckpointReader.open(path)
        let expected = cOrder.withUnsafeBufferPointer { Moments(values: $0.baseAddress!, count: $0.count) }
        try TransposedStream.$maxBytesOverride.withValue(64) {
            // Statistics take the stored order: the same moments as the C-order values.
            let statistics = try TensorStatistics.compute(try checkpoint.readerInAnyOrder(for: 0), jobs: 2)
            let m = try #require(statistics.moments)
            #expect(m.n == expected.n && m.finiteMin == expected.finiteMin && m.finiteMax == expected.finiteMax)
            #expect(abs(m.mean - expected.mean) <= 1e-15 && abs(m.std! - expected.std!) <= 1e-15)
        }
        // Within the limit, C order is served transposed.
        let reader = try checkpoint.reader(for: 0)
        var bytes = [UInt8](repeating: 0, count: 15 * 8)
        try bytes.withUnsafeMutableBytes { try reader.read(into: $0) }
        #expect(bytes == cOrder.flatMap { Bytes.le($0) })
    }

    /// Over the transpose limit, a `.npy` array is served in C order in blocks of axis 0: rank 2
    /// and 3, unit axes, big-endian elements, blocks that do not divide the axis; refused only
    /// when one index of axis 0 alone exceeds a block's bytes.
    @Test func largeArraysAreServedInBlocks() throws {
        for (shape, descr) in [([37, 11], "<f8"), ([7, 3, 5], ">f4"), ([9, 1, 4], "<f4"), ([1, 6], "<f8")] {
            let count = shape.reduce(1, *), width = descr.hasSuffix("8") ? 8 : 4
            let values = (0..<count).map { Double($0) * 0.5 - 3 }
            // C-order index of the element stored at Fortran position p.
            func cIndex(_ p: Int) -> Int {
                var rest = p, index = [Int](repeating: 0, count: shape.count)
                for d in shape.indices { index[d] = rest % shape[d]; rest /= shape[d] }
                return index.indices.reduce(0) { $0 * shape[$1] + index[$1] }
            }
            func bytes(_ v: Double) -> [UInt8] {
                let le = width == 8 ? Bytes.le(v) : Bytes.le(Float(v))
                return descr.hasPrefix(">") ? le.reversed() : le
            }
            let stored = (0..<count).flatMap { bytes(values[cIndex($0)]) }
            let dims = shape.map(String.init).joined(separator: ", ")
            let path = try Bytes.temporaryFile(Bytes.npy("{'descr': '\(descr)', 'fortran_order': True, 'shape': (\(dims),), }", data: stored),
                                               name: "big.npy")
            defer { Bytes.removeDirectory(of: path) }
            let checkpoint = try CheckpointReader.open(path)
            let rowBytes = shape.dropFirst().reduce(1, *) * width
            for rows in [1, 2, 3, shape[0]] {
                try TransposedStream.$maxBytesOverride.withValue(8) {
                    try FortranTileStream.$tileBytesOverride.withValue(rows * rowBytes) {
                        let read = try checkpoint.reader(for: 0).readAll()
                        #expect(read == values.flatMap { width == 8 ? Bytes.le($0) : Bytes.le(Float($0)) }, "\(shape) \(descr), \(rows) rows a block")
                    }
                }
            }
            try TransposedStream.$maxBytesOverride.withValue(8) {
                try FortranTileStream.$tileBytesOverride.withValue(rowBytes - 1) {
                    #expect(throws: WSAMergeError.self) { _ = try checkpoint.reader(for: 0) }
                }
            }
        }
    }
}
