import Foundation
import Testing
@testable import WSAMergeKit

/// nuslerp's linear branch for colinear vectors: exactly parallel or opposite vectors (whole
/// tensors and rows) are interpolated linearly, as METHODS' `1 − cos² ≤ 1e-16` says in exact
/// arithmetic, and other vectors beside them keep the spherical formula.
@Suite struct GeometricMethodTests {
    /// nuslerp of two F64 tensors of `shape` into F64: the values and the tensor's report.
    static func nuslerp(_ a: [Double], _ b: [Double], shape: [Int], weights: String, parameters: [(String, String)] = [])
        throws -> (values: [Double], report: JSON) {
        let files = try [a, b].map { try AdaptiveMethodTests.file($0, shape: shape) }
        let out = NSTemporaryDirectory() + "nuslerp-\(UUID().uuidString).safetensors"
        defer { try? FileManager.default.removeItem(atPath: out) }
        var request = Merger.Request(inputs: files, strategy: "nuslerp", output: OutputOptions(path: out, layout: .safetensors))
        request.dtype = .F64
        let declaration = try #require(Strategies.named("nuslerp")).declaration
        try request.parameters.assign("weight", words: weights.split(separator: ",").map(String.init), for: declaration)
        for (key, value) in parameters { try request.parameters.assign(key, words: [value], for: declaration) }
        let report = try Merger.run(request)
        let merged = try CheckpointReader.open(out)
        let bytes = try merged.reader(for: 0).readAll()
        let tensor = report.json["tensors"]?.arrayValue?.first
        return (bytes.withUnsafeBytes { Array($0.bindMemory(to: Double.self)) }, try #require(tensor))
    }

    static let a: [Double] = [0.0625, 0.03125, 0.015625, 0.046875, 0.015625, 0.046875, 0.046875, 0.015625]

    @Test func colinearVectorsAreInterpolatedLinearly() throws {
        let a = Self.a
        for (factor, weights) in [(-1.0, "1,3"), (-3.0, "1,1"), (2.0, "1,3"), (-0.1, "2,1")] {
            let b = a.map { $0 * factor }
            let (values, report) = try Self.nuslerp(a, b, shape: [1, 8], weights: weights)
            let w = weights.split(separator: ",").map { Double($0)! }, t = w[1] / (w[0] + w[1])
            #expect(report["linear_vectors"]?.intValue == 1, "b = \(factor)·a")
            #expect(values == zip(a, b).map { (1 - t) * $0 + t * $1 }, "b = \(factor)·a")
        }
    }

    /// Rows: an opposite pair beside a generic one; only the first is linear.
    @Test func rowsAreTestedOneByOne() throws {
        var rng = SplitMix(seed: 3)
        let generic0 = (0..<8).map { _ in Double(rng.next() >> 11) * 0x1p-53 - 0.5 }
        let generic1 = (0..<8).map { _ in Double(rng.next() >> 11) * 0x1p-53 - 0.5 }
        let (values, report) = try Self.nuslerp(Self.a + generic0, Self.a.map { -$0 } + generic1, shape: [2, 8], weights: "1,3",
                                                parameters: [("nuslerp_flatten", "false")])
        #expect(report["linear_vectors"]?.intValue == 1)
        #expect(Array(values[0..<8]) == Self.a.map { 0.25 * $0 - 0.75 * $0 })
        // The generic row: the spherical formula.
        let dot = zip(generic0, generic1).reduce(0) { $0 + $1.0 * $1.1 }
        let n0 = generic0.reduce(0) { $0 + $1 * $1 }.squareRoot(), n1 = generic1.reduce(0) { $0 + $1 * $1 }.squareRoot()
        let theta = acos(dot / (n0 * n1))
        let expected = zip(generic0, generic1).map { (sin(0.25 * theta) * $0 + sin(0.75 * theta) * $1) / sin(theta) }
        for (got, want) in zip(values[8...], expected) { #expect(abs(got - want) <= 1e-12 * max(1, abs(want))) }
    }

    /// karcher's `max_iter` and `tol` may not be negative (a negative tolerance never converges).
    @Test func karcherRefusesNegativeLimits() throws {
        let files = try [Self.a, Self.a.map { $0 * 2 }].map { try AdaptiveMethodTests.file($0, shape: [8]) }
        let declaration = try #require(Strategies.named("karcher")).declaration
        for (name, value) in [("max_iter", "-1"), ("tol", "-1e-5")] {
            let out = NSTemporaryDirectory() + "karcher-\(UUID().uuidString).safetensors"
            var request = Merger.Request(inputs: files, strategy: "karcher", output: OutputOptions(path: out, layout: .safetensors))
            try request.parameters.assign(name, words: [value], for: declaration)
            #expect(throws: WSAMergeError.self) { try Merger.run(request) }
            #expect(!FileManager.default.fileExists(atPath: out))
        }
    }
}
