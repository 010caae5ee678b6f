import Foundation
import Testing
import WSAMergeKit

/// Every merge method of METHODS.md against the independent float64 numpy reference
/// (`fixtures/methods/reference_methods.py`): each case of `fixtures/methods/cases.json` is run
/// through the binary; every float tensor must be within 1 ulp of the reference rounded to the
/// output dtype, copied tensors byte-identical, error cases refused with their code and words.
@Suite struct MethodTests {
    struct Case: Sendable, CustomStringConvertible {
        let name: String
        let method: String
        let args: [String]
        let expected: String?
        let error: (code: Int32, mentions: [String])?
        var description: String { name }
    }

    static let cases: [Case] = {
        guard let data = FileManager.default.contents(atPath: TestSupport.fixtures + "/methods/cases.json"),
              let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] else { return [] }
        return list.map { entry in
            let error = (entry["error"] as? [String: Any]).map { ((($0["code"] as? Int) ?? 0).asInt32, $0["mentions"] as? [String] ?? []) }
            return Case(name: entry["name"] as! String, method: entry["method"] as! String, args: entry["args"] as! [String], expected: entry["expected"] as? String,
                        error: error)
        }
    }()

    @Test func casesAreThere() { #expect(Self.cases.count >= 100) }

    /// The cases of the methods wsamerge registers.
    static let registered = cases.filter { Strategies.named($0.method) != nil }

    @Test(arguments: registered)
    func matchesTheReference(_ c: Case) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/out.safetensors"
        let run = try TestSupport.run(TestSupport.binary, ["fuse"] + c.args + ["-o", out, "--jobs", "2"], directory: TestSupport.root)
        if let error = c.error {
            TestSupport.expectRefusal(run, code: error.code, mentions: error.mentions)
            #expect(!TestSupport.fileExists(out))
            return
        }
        #expect(run.status == 0, "\(c.name): \(run.stderr)")
        guard run.status == 0, let expectedPath = c.expected else { return }
        let merged = try CheckpointReader.open(out)
        let expected = try CheckpointReader.open(TestSupport.root + "/" + expectedPath)
        #expect(merged.tensors.map(\.name) == expected.tensors.map(\.name), "\(c.name)")
        for (index, info) in expected.tensors.enumerated() {
            guard let mine = merged.index(of: info.name) else { continue }
            let got = try merged.reader(for: mine).readAll()
            let want = try expected.reader(for: index).readAll()
            let dtype = merged.tensors[mine].dtype
            guard info.dtype == .F64, dtype.isFloat else {
                #expect(got == want, "\(c.name): \(info.name) should be copied byte for byte")
                continue
            }
            // The reference rounded once to the output dtype, then compared as ordered integers.
            let width = dtype.byteWidth!, count = info.elementCount
            var rounded = [UInt8](repeating: 0, count: count * width)
            want.withUnsafeBytes { w in
                rounded.withUnsafeMutableBytes { dtype.encode(w.baseAddress!.assumingMemoryBound(to: Double.self), count: count, into: $0.baseAddress!) }
            }
            var worst = 0
            for j in 0..<count {
                let a = ordered(got, j, width), b = ordered(rounded, j, width)
                worst = max(worst, a > b ? a - b : b - a)
            }
            #expect(worst <= 1, "\(c.name): \(info.name) is \(worst) ulp from the reference")
        }
    }

    /// Element `j`'s bits as an integer that orders like the float.
    func ordered(_ bytes: [UInt8], _ j: Int, _ width: Int) -> Int {
        var bits: UInt64 = 0
        for b in (0..<width).reversed() { bits = bits << 8 | UInt64(bytes[j * width + b]) }
        let sign = UInt64(1) << UInt64(width * 8 - 1)
        return bits & sign != 0 ? -Int(bits & ~sign) : Int(bits)
    }

    @Test func randomDrawsFollowTheFormula() {
        // The first draws of seed 0, tensor "w", input 0, from the generator's README.
        let draws = Draws(seed: 0, name: "w", input: 0)
        #expect(draws.key == 0xEA59_A124_A7C0_4FCF)
        #expect([0, 1, 2, 3].map { draws.u($0) } == [0.65979527745253652, 0.54441234096189151, 0.55650196778686334, 0.26425876428599016])
        #expect(Draws(seed: 0, name: "w", input: 1).u(0) == 0.92718104944282764)
        #expect(Draws(seed: 42, name: "w", input: 0).u(1) == 0.55644601163191287)
    }
}

private extension Int {
    var asInt32: Int32 { Int32(self) }
}
