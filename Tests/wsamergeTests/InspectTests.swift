import Foundation
import Testing

/// `wsamerge inspect`: the table of contents of every format, detected by content.
@Suite struct InspectTests {
    func inspect(_ arguments: [String]) throws -> [String: Any] {
        let result = try TestSupport.wsamerge(["inspect"] + arguments)
        #expect(result.status == 0, "\(arguments): \(result.stderr)")
        #expect(result.stderr.isEmpty)
        return try result.json() as? [String: Any] ?? [:]
    }

    /// Bytes of `count` elements of `dtype` (sub-byte types packed).
    static func bytes(_ dtype: String, _ count: Int) -> Int {
        let bits = ["BOOL": 8, "U8": 8, "I8": 8, "U16": 16, "I16": 16, "U32": 32, "I32": 32, "U64": 64, "I64": 64,
                    "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6][dtype]
            ?? (dtype.hasPrefix("F8") ? 8 : 0)
        return count * bits / 8
    }

    @Test(arguments: TestSupport.statsFixtures)
    func listsEveryTensorOfEveryFixture(relative: String) throws {
        let report = try inspect([TestSupport.fixture(relative)])
        let expected = try #require(TestSupport.expectedStats[relative])
        #expect(report["format"] as? String == expected["format"] as? String)
        #expect(report["tensor_count"] as? Int == expected["tensor_count"] as? Int)
        #expect(report["parameter_count"] as? Int == expected["parameter_count"] as? Int)
        #expect(NSDictionary(dictionary: report["metadata"] as? [String: Any] ?? ["missing": true])
                .isEqual(to: expected["metadata"] as? [String: Any] ?? [:]))
        let got = report["tensors"] as? [[String: Any]] ?? []
        let want = TestSupport.expectedTensors(relative)
        #expect(got.count == want.count)
        for (g, w) in zip(got, want) {
            #expect(Set(g.keys) == ["name", "dtype", "shape", "bytes"])
            #expect(g["name"] as? String == w["name"] as? String)
            #expect(g["dtype"] as? String == w["dtype"] as? String)
            #expect(g["shape"] as? [Int] == w["shape"] as? [Int])
            #expect(g["bytes"] as? Int == Self.bytes(w["dtype"] as! String, w["count"] as! Int), "\(w["name"]!)")
        }
    }

    @Test func basicCheckpoint() throws {
        let report = try inspect([TestSupport.fixture("basic.safetensors")])
        let text = try TestSupport.wsamerge(["inspect", TestSupport.fixture("basic.safetensors")]).stdout
        #expect(text.hasPrefix("{\"file\":") && text.hasSuffix("}\n"))
        #expect(report["file"] as? String == TestSupport.fixture("basic.safetensors"))
        #expect(report["metadata"] as? [String: String] == ["format": "pt"])
        let tensors = report["tensors"] as? [[String: Any]] ?? []
        let embed = try #require(tensors.first { $0["name"] as? String == "model.embed_tokens.weight" })
        #expect(embed["dtype"] as? String == "F32" && embed["shape"] as? [Int] == [16, 8] && embed["bytes"] as? Int == 512)
    }

    @Test func shardedCheckpointByIndexOrDirectory() throws {
        let byIndex = try inspect([TestSupport.fixture("sharded/model.safetensors.index.json")])
        let byDirectory = try inspect([TestSupport.fixture("sharded")])
        #expect(byIndex["format"] as? String == "safetensors-sharded")
        #expect(NSArray(array: byIndex["tensors"] as? [Any] ?? []).isEqual(to: byDirectory["tensors"] as? [Any] ?? [1]))
        #expect(byDirectory["tensor_count"] as? Int == 5)
        // A directory holding just model.safetensors is a checkpoint too.
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try FileManager.default.copyItem(atPath: TestSupport.fixture("basic.safetensors"), toPath: dir + "/model.safetensors")
        let single = try inspect([dir])
        #expect(single["format"] as? String == "safetensors" && single["tensor_count"] as? Int == 6)
    }

    @Test func formatsAreDetectedByContentNotExtension() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let copies = [("basic.safetensors", "weights.bin", "safetensors"), ("savez_compressed.npz", "archive.data", "npz"),
                      ("npy/fortran.npy", "fortran.npy.bak", "npy"), ("savez.npz", "looks.safetensors", "npz")]
        for (source, name, format) in copies {
            try FileManager.default.copyItem(atPath: TestSupport.fixture(source), toPath: dir + "/" + name)
            let report = try inspect([dir + "/" + name])
            #expect(report["format"] as? String == format, "\(name)")
            #expect(report["tensor_count"] as? Int == TestSupport.expectedStats[source]?["tensor_count"] as? Int)
        }
        // An index file under another name is still an index.
        let index = try inspect([TestSupport.fixture("sharded/model.safetensors.index.json")])
        #expect(index["tensor_count"] as? Int == 5)
    }

    @Test func npyTensorIsNamedAfterTheFileStem() throws {
        let report = try inspect([TestSupport.fixture("npy/be_i8.npy")])
        let tensors = report["tensors"] as? [[String: Any]] ?? []
        #expect(tensors.count == 1 && tensors[0]["name"] as? String == "be_i8" && tensors[0]["dtype"] as? String == "I64")
        #expect(report["metadata"] as? [String: String] == [:])
    }

    @Test func npzNamesKeepTheirSlashes() throws {
        let report = try inspect([TestSupport.fixture("savez.npz")])
        let names = (report["tensors"] as? [[String: Any]] ?? []).map { $0["name"] as? String ?? "" }
        #expect(names == ["layer0/weight", "layer0/bias", "layer1/weight", "layer1/scale", "step", "empty"])
    }

    @Test func severalFilesAndFilters() throws {
        let files = [TestSupport.fixture("basic.safetensors"), TestSupport.fixture("savez.npz")]
        let result = try TestSupport.wsamerge(["inspect", "--include", "weight", "--exclude", "layers\\.1|layer1"] + files)
        #expect(result.status == 0)
        let docs = try result.jsonLines().map { $0 as? [String: Any] ?? [:] }
        #expect(docs.count == 2)
        let names = docs.map { ($0["tensors"] as? [[String: Any]] ?? []).map { $0["name"] as? String ?? "" } }
        #expect(names[0] == ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight"])
        #expect(names[1] == ["layer0/weight"])
        #expect(docs[1]["tensor_count"] as? Int == 1 && docs[1]["parameter_count"] as? Int == 24)
    }

    @Test func tableFormat() throws {
        let result = try TestSupport.wsamerge(["inspect", "--format", "table", TestSupport.fixture("dtypes.safetensors")])
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix(TestSupport.fixture("dtypes.safetensors") + " (safetensors): 21 tensors, "))
        #expect(lines[1].split(separator: " ").map(String.init) == ["name", "dtype", "shape", "bytes"])
        let rows = Array(lines.dropFirst(1))
        #expect(Set(rows.map(\.count)).count == 1, "bytes are right-aligned: \(rows)")
        let shapeStart = lines[1].range(of: "shape")!.lowerBound.utf16Offset(in: lines[1])
        #expect(rows.dropFirst().allSatisfy { Array($0)[shapeStart] == "[" && Array($0)[shapeStart - 1] == " " })
        #expect(rows.contains { $0.hasPrefix("empty ") && $0.contains("[0, 4]") && $0.hasSuffix(" 0 B") })
        #expect(rows.contains { $0.hasPrefix("scalar ") && $0.contains("[]") && $0.hasSuffix(" 4 B") })
    }
}
