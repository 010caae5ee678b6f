import Testing
@testable import WSAMergeKit

/// Fortran-ordered `.npy` arrays: served in C order up to `TransposedStream.maxBytes`, and read as
/// stored, whatever their size, by the passes that take any order (statistics, scopes).
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
            // C order needs the transpose, over the (lowered) limit: refused, naming the tensor.
            #expect(throws: WSAMergeError.self) { _ = try checkpoint.reader(for: 0) }
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
}
