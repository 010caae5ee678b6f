import Foundation
import Testing
@testable import WSAMergeKit

/// The task-vector pipeline's guarantees beyond the reference cases (`MethodTests`): the same
/// bytes for every `--jobs`, and the radix selection for tensors over the in-memory limit gives
/// the same bytes as the in-memory path.
@Suite struct TaskVectorTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path
    static let methods = root + "/fixtures/methods"

    func merge(_ strategy: String, _ parameters: [(String, [String])], jobs: Int, base: String = "base_bf16",
               dtype: DType? = nil) throws -> Data {
        let out = NSTemporaryDirectory() + "tv-\(UUID().uuidString).safetensors"
        defer { try? FileManager.default.removeItem(atPath: out) }
        var request = Merger.Request(inputs: ["ft0", "ft1", "ft2"].map { Self.methods + "/\($0)_bf16.safetensors" }, strategy: strategy,
                                     output: OutputOptions(path: out, layout: .safetensors))
        request.base = Self.methods + "/\(base).safetensors"
        request.jobs = jobs
        request.dtype = dtype
        let declaration = try #require(Strategies.named(strategy)).declaration
        try request.parameters.assign("weight", words: ["1", "0.5", "-0.25"], for: declaration)
        for (name, words) in parameters { try request.parameters.assign(name, words: words, for: declaration) }
        _ = try Merger.run(request)
        return try Data(contentsOf: URL(fileURLWithPath: out))
    }

    static let cases: [(String, [(String, [String])])] = [
        ("ties", [("density", ["0.3", "0.5", "0.7"])]),
        ("dare_ties", [("density", ["0.5"])]),
        ("breadcrumbs_ties", [("density", ["0.6"]), ("gamma", ["0.1"])]),
        ("della", [("density", ["0.5"])]),
        ("ties", [("density", ["0.4"]), ("rescale", ["true"])]),
    ]

    @Test(arguments: cases.indices)
    func sameBytesForEveryJobs(_ index: Int) throws {
        let (strategy, parameters) = Self.cases[index]
        let one = try merge(strategy, parameters, jobs: 1)
        for jobs in [2, 4] { #expect(try merge(strategy, parameters, jobs: jobs) == one, "\(strategy) --jobs \(jobs)") }
    }

    @Test(arguments: cases.indices)
    func radixSelectionMatchesInMemory(_ index: Int) throws {
        let (strategy, parameters) = Self.cases[index]
        let inMemory = try merge(strategy, parameters, jobs: 2)
        for limit in [1, 7, 64] {
            let radix = try Selection.$limitOverride.withValue(limit) { try merge(strategy, parameters, jobs: 2) }
            #expect(radix == inMemory, "\(strategy) with a selection limit of \(limit)")
        }
    }

    /// Selections bracketed from a sample (the whole-tensor size lowered so the fixtures are
    /// sampled), with the normal margin and with none (brackets miss: the radix fallback), give
    /// the same bytes as whole-tensor selection.
    @Test(arguments: cases.indices)
    func sampledSelectionMatchesWhole(_ index: Int) throws {
        let (strategy, parameters) = Self.cases[index]
        let whole = try merge(strategy, parameters, jobs: 2)
        for margin in [nil, 0, 1] as [Int?] {
            let sampled = try Selection.$wholeOverride.withValue(1) {
                try Selection.$marginOverride.withValue(margin) { try merge(strategy, parameters, jobs: 2) }
            }
            #expect(sampled == whole, "\(strategy) sampled with margin \(margin.map(String.init) ?? "default")")
        }
    }

    /// DELLA's writing pass ranks again when the rescale pass's masks exceed their budget: the
    /// same bytes as from the kept masks.
    @Test(arguments: ["della", "della_linear"])
    func dellaRanksAgainBeyondTheMaskBudget(_ strategy: String) throws {
        let kept = try merge(strategy, [("density", ["0.4"])], jobs: 2)
        let ranked = try RankedRandom.$maskBudgetOverride.withValue(0) { try merge(strategy, [("density", ["0.4"])], jobs: 2) }
        #expect(kept == ranked)
    }

    /// Empty tensors (no rows, empty rows, a 1-D tensor of none) are written empty and reported
    /// under the method's own name, as the rest of the family does, whichever path DELLA takes
    /// (marks held for the family's writing pass, or ranking in its own).
    @Test(arguments: ["della", "della_linear", "ties"])
    func emptyTensorsKeepTheMethodsName(_ strategy: String) throws {
        let header = #"{"a":{"dtype":"BF16","shape":[0,5],"data_offsets":[0,0]},"b":{"dtype":"BF16","shape":[5,0],"data_offsets":[0,0]},"#
            + #""c":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]}}"#
        let models = try (0..<3).map { m in
            try Bytes.temporaryFile(Bytes.safetensors(header, data: (0..<8).flatMap { Bytes.le(UInt16(Float(Double($0 + m) / 8).bitPattern >> 16)) }),
                                    name: "m\(m).safetensors")
        }
        defer { for path in models { Bytes.removeDirectory(of: path) } }
        for rescale in strategy == "ties" ? ["false"] : ["true", "false"] {
            let out = NSTemporaryDirectory() + "tv-\(UUID().uuidString).safetensors"
            defer { try? FileManager.default.removeItem(atPath: out) }
            var request = Merger.Request(inputs: Array(models[1...]), strategy: strategy, output: OutputOptions(path: out, layout: .safetensors))
            request.base = models[0]
            let declaration = try #require(Strategies.named(strategy)).declaration
            try request.parameters.assign("weight", words: ["1", "0.5"], for: declaration)
            try request.parameters.assign("density", words: ["0.5"], for: declaration)
            try request.parameters.assign("rescale", words: [rescale], for: declaration)
            let report = try Merger.run(request)
            #expect(report.results.map { $0?.method } == [strategy, strategy, strategy, strategy], "rescale \(rescale)")
        }
    }

    /// Breadcrumbs' `gamma` may not be negative (it clamped to 0 silently), for either method or
    /// one input of several; nothing is written. 0 is allowed.
    @Test func breadcrumbsRefusesANegativeGamma() throws {
        for (strategy, gamma) in [("breadcrumbs", ["-0.01"]), ("breadcrumbs_ties", ["0.01", "0", "-1e-9"])] {
            let out = NSTemporaryDirectory() + "tv-\(UUID().uuidString).safetensors"
            var request = Merger.Request(inputs: ["ft0", "ft1", "ft2"].map { Self.methods + "/\($0)_bf16.safetensors" }, strategy: strategy,
                                         output: OutputOptions(path: out, layout: .safetensors))
            request.base = Self.methods + "/base_bf16.safetensors"
            let declaration = try #require(Strategies.named(strategy)).declaration
            try request.parameters.assign("weight", words: ["1"], for: declaration)
            try request.parameters.assign("gamma", words: gamma, for: declaration)
            #expect(throws: WSAMergeError.self, "\(strategy) gamma \(gamma)") { try Merger.run(request) }
            #expect(!FileManager.default.fileExists(atPath: out))
        }
        #expect(try merge("breadcrumbs", [("density", ["0.6"]), ("gamma", ["0"])], jobs: 2).count > 0)
    }

    /// The selection scans and the writing pass read the stored elements in place (BF16 task
    /// vectors, against a BF16 or an F32 base, written as each output dtype): the same bytes as
    /// through decoded blocks.
    @Test(arguments: ["base_bf16", "base"])
    func inPlaceMatchesDecoded(_ base: String) throws {
        for (strategy, parameters) in Self.cases + [("task_arithmetic", []), ("dare_linear", [("density", ["0.3"])])] {
            for dtype in [nil, DType.F32, .F16, .F64] {
                let whole = strategy.hasPrefix("breadcrumbs") ? 1 : nil
                let inPlace = try Selection.$wholeOverride.withValue(whole) { try merge(strategy, parameters, jobs: 2, base: base, dtype: dtype) }
                let decoded = try Lockstep.$rawKernelsEnabled.withValue(false) {
                    try Selection.$wholeOverride.withValue(whole) { try merge(strategy, parameters, jobs: 2, base: base, dtype: dtype) }
                }
                #expect(inPlace == decoded, "\(strategy) against \(base) as \(dtype?.rawValue ?? "the inputs' dtype")")
            }
        }
    }

    /// A base and three fine-tunes large enough for many blocks and tiles: BF16 tensors of
    /// 10 000 and 90 × 70 elements with quantised values (many exact ties) and, in one input, an
    /// infinity (its blocks go the decoded way).
    static func largeModels() throws -> [String] {
        var g = SplitMix(seed: 7)
        func bf16(_ x: Double) -> [UInt8] { Bytes.le(UInt16(Float(x).bitPattern >> 16)) }
        return try (0..<4).map { m in
            var data: [UInt8] = []
            for j in 0..<16_300 {
                var value = Double(Int(g.next() % 61) - 30) / 64 + (m == 0 ? 0 : Double(Int(g.next() % 9) - 4) / 512)
                if m == 2 && j == 12_345 { value = .infinity }
                data += bf16(value)
            }
            let header = "{\"a\":{\"dtype\":\"BF16\",\"shape\":[10000],\"data_offsets\":[0,20000]},"
                + "\"b\":{\"dtype\":\"BF16\",\"shape\":[90,70],\"data_offsets\":[20000,32600]}}"
            return try Bytes.temporaryFile(Bytes.safetensors(header, data: data), name: "m\(m).safetensors")
        }
    }

    /// The stored-element paths (selection scans and the writing pass) over many blocks and tiles,
    /// with sampled brackets, give the bytes of the decoded path.
    @Test func inPlaceMatchesDecodedOverManyBlocks() throws {
        let models = try Self.largeModels()
        defer { for path in models { Bytes.removeDirectory(of: path) } }
        for (strategy, parameters) in Self.cases + [("dare_linear", [("density", ["0.3"])])] {
            func merge() throws -> Data {
                let out = NSTemporaryDirectory() + "tv-\(UUID().uuidString).safetensors"
                defer { try? FileManager.default.removeItem(atPath: out) }
                var request = Merger.Request(inputs: Array(models[1...]), strategy: strategy, output: OutputOptions(path: out, layout: .safetensors))
                request.base = models[0]
                request.jobs = 2
                let declaration = try #require(Strategies.named(strategy)).declaration
                try request.parameters.assign("weight", words: ["1", "0.5", "-0.25"], for: declaration)
                for (name, words) in parameters { try request.parameters.assign(name, words: words, for: declaration) }
                _ = try Merger.run(request)
                return try Data(contentsOf: URL(fileURLWithPath: out))
            }
            let inPlace = try merge()
            let decoded = try Lockstep.$rawKernelsEnabled.withValue(false) { try merge() }
            #expect(inPlace == decoded, "\(strategy)")
        }
    }
}
