import Foundation
import Testing
import WSAMergeKit  // the public API only: outside code can implement a strategy

/// `out = factor · x_0`: a strategy written outside the library.
struct ScaleFirst: MergeStrategy, TensorMerge {
    static let declaration = StrategyDeclaration(
        identifier: "scale_first", summary: "The first input times a factor.", base: .none, inputs: 1...3,
        parameters: [ParameterDeclaration("factor", .number, .shared, default: .number(2), help: "The factor.")])

    let context: MergeContext

    init(_ context: MergeContext) throws { self.context = context }

    func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let factor = try context.parameters.number("factor", tensor: item.name)
        try Lockstep.run(try context.readers(item), jobs: context.jobs, output: output, kernel: { inputs, count, out in
            for j in 0..<count { out[j] = factor * inputs[0][j] }
        }, fold: { _ in })
        return TensorMergeResult(method: "scale_first", details: [("factor", .double(factor))])
    }
}

@Suite struct ToyStrategyTests {
    @Test func outsideStrategyMerges() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().path
        let a = root + "/fixtures/merge/a.safetensors", b = root + "/fixtures/merge/b.safetensors"
        let out = NSTemporaryDirectory() + "toy-\(UUID().uuidString).safetensors"
        defer { try? FileManager.default.removeItem(atPath: out) }
        var request = Merger.Request(inputs: [a, b], strategy: "scale_first", output: OutputOptions(path: out, layout: .safetensors))
        try request.parameters.assign("factor", words: ["3"], for: ScaleFirst.declaration)
        request.dtype = .F64
        let report = try Merger.run(request, strategy: ScaleFirst.self)
        #expect(report.json["strategy"]?.stringValue == "scale_first")
        let merged = try CheckpointReader.open(out), first = try CheckpointReader.open(a)
        let name = "model.layers.0.mlp.weight"
        let values = try decode(merged, name), original = try decode(first, name)
        #expect(values == original.map { 3 * $0 })
    }

    func decode(_ checkpoint: Checkpoint, _ name: String) throws -> [Double] {
        let index = try #require(checkpoint.index(of: name))
        let bytes = try checkpoint.reader(for: index).readAll()
        let dtype = checkpoint.tensors[index].dtype
        var values = [Double](repeating: 0, count: checkpoint.tensors[index].elementCount)
        bytes.withUnsafeBytes { raw in
            values.withUnsafeMutableBufferPointer { dtype.decode(raw.baseAddress!, count: $0.count, into: $0.baseAddress!) }
        }
        return values
    }
}
