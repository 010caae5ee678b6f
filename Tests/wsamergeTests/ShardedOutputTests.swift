import Foundation
import Testing

/// Sharded output into a directory: an earlier checkpoint there is replaced only with
/// `--force` (and then completely), and a failed run leaves no directory it created.
@Suite struct ShardedOutputTests {
    static let a = TestSupport.fixtures + "/merge/a.safetensors"
    static let b = TestSupport.fixtures + "/merge/b.safetensors"

    func files(_ dir: String) throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).sorted() }

    @Test func earlierCheckpointReplacedOnlyWithForce() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let dir = root + "/model"
        #expect(try TestSupport.wsamerge(["convert", Self.a, "-o", dir + "/", "--max-shard-size", "5kB"]).status == 0)
        #expect(try files(dir) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                   "model-00003-of-00003.safetensors", "model.safetensors.index.json"])
        let refused = try TestSupport.wsamerge(["convert", Self.b, "-o", dir + "/"])
        TestSupport.expectRefusal(refused, code: 73, mentions: ["already holds a checkpoint", "--force"])
        #expect(try files(dir).count == 4)
        #expect(try TestSupport.wsamerge(["convert", Self.b, "-o", dir + "/", "--force"]).status == 0)
        #expect(try files(dir) == ["model.safetensors"])
        // The directory now reads as model b.
        let inspect = try TestSupport.wsamerge(["stats", dir])
        let fromB = try TestSupport.wsamerge(["stats", Self.b])
        let tensors = { (r: TestSupport.Result) in ((try? r.json()) as? [String: Any])?["tensors"] as? [[String: Any]] ?? [] }
        #expect(tensors(inspect).map { $0["mean"] as? Double } == tensors(fromB).map { $0["mean"] as? Double })
    }

    @Test func failedRunLeavesNoNewDirectory() throws {
        let root = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(root) }
        let run = try TestSupport.wsamerge(["fuse", "--strict", TestSupport.fixtures + "/hard.safetensors",
                                            TestSupport.fixtures + "/hard.safetensors", "-o", root + "/shards/"])
        TestSupport.expectRefusal(run, code: 65, mentions: ["strict mode"])
        #expect(try files(root).isEmpty)
    }
}
