import CKernels
import Foundation
import Testing
@testable import WSAMergeKit

/// The raw kernels (the fused combine, the Fisher check read in place) are shortcuts: every
/// strategy must write the same bytes with them as through decoded float64 blocks, and blocks
/// they cannot finish go back to the decoded path.
@Suite(.serialized) struct RawKernelTests {
    /// Three models and their Fisher files: BF16, F16, F32 and F64 tensors whose sizes leave partial blocks
    /// and a scalar tail, Gaussian values with per-model scopes, one tensor holding a NaN, a
    /// subnormal-sized value and an infinity in separate blocks, and Fisher values that are zero
    /// in every model at the start of one tensor.
    func inputs() throws -> (models: [String], fishers: [String]) {
        var rng = SplitMix(seed: 11)
        func gaussian() -> Double {
            let u = Double(rng.next() >> 11 | 1) * 0x1p-53, v = Double(rng.next() >> 11) * 0x1p-53
            return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
        }
        let shapes: [(String, String, [Int])] = [("a.weight", "BF16", [97, 85]), ("b.weight", "F32", [61, 67]),
                                                 ("c.weight", "BF16", [3, 4099]), ("d.bias", "BF16", [13]),
                                                 ("e.weight", "F64", [5, 203]), ("f.weight", "F16", [41, 307])]
        var models: [String] = [], fishers: [String] = []
        for m in 0..<3 {
            var header: [String] = [], data: [UInt8] = [], fisherData: [UInt8] = []
            for (name, dtype, shape) in shapes {
                let count = shape.reduce(1, *)
                let scale = [0.02, 0.05, 0.011][m], shift = [0.0, 0.01, -0.02][m]
                var values = (0..<count).map { _ in gaussian() * scale + shift }
                if name == "c.weight" && m == 1 { (values[5], values[4200], values[9000]) = (.nan, 0x1p-140, .infinity) }
                // Finite, and zero for every model at the start of b.weight (an empty denominator with ε = 0).
                let fisher = values.enumerated().map { i, x in x.isFinite && !(name == "b.weight" && i < 50) ? x * x * 100 : 0 }
                func bytes(_ xs: [Double]) -> [UInt8] {
                    switch dtype {
                    case "F64": xs.flatMap { Bytes.le($0) }
                    case "F32": xs.flatMap { Bytes.le(Float($0)) }
                    case "F16": xs.flatMap { Bytes.le(Float16($0).bitPattern) }
                    default: xs.flatMap { Bytes.le(UInt16(Float($0).bitPattern >> 16)) }
                    }
                }
                header.append(#""\#(name)":{"dtype":"\#(dtype)","shape":\#(shape),"data_offsets":[\#(data.count),\#(data.count + bytes(values).count)]}"#)
                data += bytes(values)
                fisherData += bytes(fisher)
            }
            let json = "{" + header.joined(separator: ",") + "}"
            models.append(try Bytes.temporaryFile(Bytes.safetensors(json, data: data), name: "m\(m).safetensors"))
            fishers.append(try Bytes.temporaryFile(Bytes.safetensors(json, data: fisherData), name: "f\(m).safetensors"))
        }
        return (models, fishers)
    }

    @Test(arguments: ["average", "wsa", "fisher"], [nil, DType.F32, .BF16, .F64, .F16])
    func fusedAndDecodedPathsWriteTheSameBytes(strategy: String, dtype: DType?) throws {
        let (models, fishers) = try inputs()
        defer { for path in models + fishers { Bytes.removeDirectory(of: path) } }
        func merge(fused: Bool) throws -> Data {
            let (bytes, report) = try Lockstep.$rawKernelsEnabled.withValue(fused) {
                try Self.merge(models, fishers: fishers, strategy: strategy, dtype: dtype, fisherEpsilon: dtype == nil ? 0 : 1e-6)
            }
            #expect(report.nonFiniteTensors == ["c.weight"])
            return bytes
        }
        let fused = try merge(fused: true), decoded = try merge(fused: false)
        // Compared as a Bool: a failing `==` on megabytes would make the test library diff them.
        let same = fused == decoded
        let firstDifference = zip(fused, decoded).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(same, "outputs differ (\(fused.count) and \(decoded.count) bytes, first at \(firstDifference ?? -1))")
    }

    /// The bytes and report of merging `models` (weights 0.2, 0.5, 0.3; two jobs) with `strategy`.
    static func merge(_ models: [String], fishers: [String], strategy: String, dtype: DType?,
                      fisherEpsilon: Double = 1e-6) throws -> (Data, Merger.Report) {
        let out = NSTemporaryDirectory() + "merge-\(UUID().uuidString).safetensors"
        defer { try? FileManager.default.removeItem(atPath: out) }
        var request = Merger.Request(inputs: models, strategy: strategy, output: OutputOptions(path: out, layout: .safetensors))
        request.parameters.set("weight", perInput: [0.2, 0.5, 0.3].map { .value(.number($0)) })
        request.dtype = dtype
        request.jobs = 2
        if strategy == "fisher" {
            request.files["fisher"] = fishers
            request.parameters.set("fisher_epsilon", .value(.number(fisherEpsilon)))
        }
        let report = try Merger.run(request)
        return (try Data(contentsOf: URL(fileURLWithPath: out)), report)
    }

    /// Blocks the fused kernel cannot finish are flagged, never written wrongly.
    @Test func flagsWhatOnlyTheDecodedPathHandles() {
        let x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9]
        func combine(_ values: [Float], fisher: [Float]? = nil, out: Int32 = Int32(WSK_BF16)) -> Bool {
            var output = [UInt8](repeating: 0, count: values.count * 4)
            return values.withUnsafeBytes { raw in
                (fisher ?? values).withUnsafeBytes { f in
                    var term = wsk_term(x: raw.baseAddress, fisher: f.baseAddress, kind: Int32(WSK_F32), fisher_kind: Int32(WSK_F32),
                                        weight: 1, mean: 0)
                    return wsk_combine(&term, 1, Int32(fisher == nil ? WSK_AVERAGE : WSK_FISHER), 1, 0, values.count, out, &output) != 0
                }
            }
        }
        #expect(!combine(x))
        for i in [0, 7, 8] {  // a vector lane, the last lane, the scalar tail
            var nan = x, tiny = x, empty = x
            nan[i] = .nan
            tiny[i] = 0x1p-130
            empty[i] = 0
            #expect(combine(nan) && combine(nan, out: Int32(WSK_F32)))
            #expect(combine(tiny) && !combine(tiny, out: Int32(WSK_F32)))  // a BF16 subnormal; fine as F32
            #expect(combine(x, fisher: empty))  // Fisher denominator 0
            #expect(!combine(x, fisher: x))
        }
        // F16 output: subnormal results stay on the fast path, overflow does not.
        #expect(!combine(x, out: Int32(WSK_F16)))
        var small = x, large = x
        small[3] = 1e-6
        large[8] = 70000
        #expect(!combine(small, out: Int32(WSK_F16)))
        #expect(combine(large, out: Int32(WSK_F16)) && !combine(large, out: Int32(WSK_F32)))
        // F16 input, read in place.
        let halves = x.map { Float16($0).bitPattern }
        var output = [UInt8](repeating: 0, count: x.count * 2)
        let redo = halves.withUnsafeBytes { raw in
            var term = wsk_term(x: raw.baseAddress, fisher: nil, kind: Int32(WSK_F16), fisher_kind: 0, weight: 0.5, mean: 0)
            return wsk_combine(&term, 1, Int32(WSK_AVERAGE), 1, 0, x.count, Int32(WSK_F16), &output)
        }
        #expect(redo == 0 && output == x.flatMap { Bytes.le(Float16($0 / 2).bitPattern) })
    }
}
