import Foundation
import Testing

/// PyTorch checkpoints end to end: `inspect`, `stats`, `convert` of the torch-written fixtures
/// against their safetensors twins, directories, and the hostile pickles, refused without running
/// anything.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct PyTorchTests {
    static let dir = TestSupport.fixture("torch")
    // Parsed once and only read afterwards; JSONSerialization's values are not `Sendable`.
    nonisolated(unsafe) static let expected: [String: [String: Any]] = {
        guard let data = FileManager.default.contents(atPath: dir + "/expected.json"),
              let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        return root["files"] as? [String: [String: Any]] ?? [:]
    }()

    @Test(arguments: ["lightning.ckpt", "fl_client.pth", "views.pt", "dtypes_p4.pt", "model_dir/pytorch_model.bin"])
    func inspectListsTensorsAndNonTensorLeaves(fixture: String) throws {
        let result = try TestSupport.wsamerge(["inspect", Self.dir + "/" + fixture])
        #expect(result.status == 0, "\(result.stderr)")
        let doc = try #require(try result.json() as? [String: Any])
        #expect(doc["format"] as? String == "pytorch")
        let expected = try #require(Self.expected[fixture])
        let names = (doc["tensors"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names == (expected["tensors"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String })
        let leaves = (doc["non_tensors"] as? [[String: String]] ?? [])
        #expect(leaves == (expected["non_tensors"] as? [[String: String]] ?? []))
    }

    @Test(arguments: [("dtypes_p2.pt", "dtypes_p2"), ("dtypes_p5.pt", "dtypes_p5"), ("bigendian.pt", "bigendian"),
                      ("views.pt", "views"), ("lightning.ckpt", "lightning"), ("fl_client.pth", "fl_client"),
                      ("parameters.pt", "parameters"), ("lone_tensor.pt", "lone_tensor"),
                      ("model_dir", "model_dir__pytorch_model"), ("sharded", "sharded"), ("complex.pt", "complex")])
    func convertGivesTheValuesTorchConverted(fixture: String, twin: String) throws {
        let out = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(out) }
        let result = try TestSupport.wsamerge(["convert", Self.dir + "/" + fixture, "-o", out + "/out.safetensors"])
        #expect(result.status == 0, "\(result.stderr)")
        try TestSupport.pythonOK("""
        _, a, _ = st_raw(sys.argv[1])
        _, b, _ = st_raw(sys.argv[2])
        assert set(a) == set(b), (sorted(a), sorted(b))
        for k in b:
            assert a[k] == b[k], k
        """, [out + "/out.safetensors", Self.dir + "/expected/" + twin + ".safetensors"])
    }

    @Test(arguments: [("views.pt", "views"), ("dtypes_p2.pt", "dtypes_p2"), ("sharded", "sharded")])
    func statsEqualTheSafetensorsTwin(fixture: String, twin: String) throws {
        func tensors(_ path: String) throws -> [String: NSDictionary] {
            let result = try TestSupport.wsamerge(["stats", path])
            #expect(result.status == 0, "\(result.stderr)")
            let doc = try #require(try result.json() as? [String: Any])
            return Dictionary(uniqueKeysWithValues: (doc["tensors"] as? [[String: Any]] ?? []).map { ($0["name"] as! String, $0 as NSDictionary) })
        }
        let a = try tensors(Self.dir + "/" + fixture), b = try tensors(Self.dir + "/expected/" + twin + ".safetensors")
        #expect(a == b)
    }

    @Test func fuseReadsPyTorchInputs() throws {
        let out = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(out) }
        let result = try TestSupport.wsamerge(["fuse", "--strategy", "average", Self.dir + "/views.pt",
                                               Self.dir + "/expected/views.safetensors", "-o", out + "/m.safetensors"])
        #expect(result.status == 0, "\(result.stderr)")
        try TestSupport.pythonOK("""
        a = st_arrays(sys.argv[1]); b = st_arrays(sys.argv[2])
        for k in b:
            assert same_values(a[k], b[k]), k
        """, [out + "/m.safetensors", Self.dir + "/expected/views.safetensors"])
    }

    @Test func directoriesPreferSafetensors() throws {
        let out = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(out) }
        let model = out + "/model"
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.dir + "/model_dir/pytorch_model.bin", toPath: model + "/pytorch_model.bin")
        var doc = try #require(try TestSupport.wsamerge(["inspect", model]).json() as? [String: Any])
        #expect(doc["format"] as? String == "pytorch")
        try FileManager.default.copyItem(atPath: Self.dir + "/expected/model_dir__pytorch_model.safetensors", toPath: model + "/model.safetensors")
        doc = try #require(try TestSupport.wsamerge(["inspect", model]).json() as? [String: Any])
        #expect(doc["format"] as? String == "safetensors")
        doc = try #require(try TestSupport.wsamerge(["inspect", Self.dir + "/sharded"]).json() as? [String: Any])
        #expect(doc["format"] as? String == "pytorch-sharded")
        #expect(doc["tensor_count"] as? Int == 5)
    }

    static let refusals: [(String, [String])] = [
        ("hostile/os_system.pt", ["pickle references 'os.system', which a weights-only checkpoint never needs; nothing was executed"]),
        ("hostile/posix_system.pt", ["'posix.system'", "nothing was executed"]),
        ("hostile/builtins_eval.pt", ["'builtins.eval'"]),
        ("hostile/stack_global.pt", ["'os.system'"]),
        ("hostile/stack_global_memo.pt", ["'subprocess.getoutput'"]),
        ("hostile/torch_load.pt", ["'torch.load'"]),
        ("hostile/inst.pt", ["'os.system'"]),
        ("hostile/model_class.pt", ["'__main__.Net'"]),
        ("hostile/numpy_reconstruct.pt", ["'numpy.core.multiarray._reconstruct'"]),
        ("hostile/ext.pt", ["extension registry"]),
        ("hostile/deep_marks.pt", ["nested more than"]),
        ("hostile/deep_lists.pt", ["nests more than"]),
        ("hostile/huge_string.pt", ["runs past the end of the pickle"]),
        ("hostile/huge_bytes8.pt", ["runs past the end of the pickle"]),
        ("hostile/memo_bomb.pt", ["memo bomb"]),
        ("hostile/view_past_storage.pt", ["tensor 'w'", "reaches past its storage"]),
        ("hostile/offset_past_storage.pt", ["tensor 'w'", "reaches past its storage"]),
        ("hostile/short_storage.pt", ["tensor 'w'", "holds 8 bytes"]),
        ("hostile/view_bomb.pt", ["tensor 'w'", "declares 4398046511104 bytes over a storage of 4 bytes", "view bomb"]),
        ("hostile/overflow_stride.pt", ["tensor 'w'", "overflows"]),
        ("hostile/compressed.pt", ["is compressed"]),
        ("hostile/raw_pickle.pkl", ["raw Python pickle", "nothing was unpickled"]),
        ("refused/legacy.pt", ["legacy format", "torch.save(model.state_dict(), path)", "safetensors.torch.save_file"]),
        ("refused/torchscript.pt", ["TorchScript", "torch.save(model.state_dict(), path)", "safetensors.torch.save_file"]),
    ]

    @Test(arguments: refusals.indices)
    func hostileAndUnsupportedFilesAreRefusedQuickly(index: Int) throws {
        let (file, mentions) = Self.refusals[index]
        for command in [["inspect"], ["stats"], ["convert", "-o", NSTemporaryDirectory() + "wsamerge-never-\(UUID().uuidString).safetensors"]] {
            let start = Date()
            let result = try TestSupport.wsamerge([command[0], Self.dir + "/" + file] + command.dropFirst())
            #expect(Date().timeIntervalSince(start) < 2, "\(file) took too long")
            TestSupport.expectRefusal(result, code: 65, mentions: [Self.dir + "/" + file + ": "] + mentions)
        }
    }

    /// Legacy-format shards behind a `pytorch_model.bin.index.json` get the legacy refusal,
    /// naming the shard, as a single legacy file does (they were taken for safetensors).
    @Test func legacyShardsAreRefusedAsLegacy() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let shard = dir + "/pytorch_model-00001-of-00001.bin"
        try FileManager.default.copyItem(atPath: Self.dir + "/refused/legacy.pt", toPath: shard)
        try #"{"metadata": {}, "weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}"#
            .write(toFile: dir + "/pytorch_model.bin.index.json", atomically: true, encoding: .utf8)
        for target in [dir, dir + "/pytorch_model.bin.index.json"] {
            TestSupport.expectRefusal(try TestSupport.wsamerge(["stats", target]), code: 65, mentions: [shard + ": ", "legacy format"])
        }
    }

    /// A pickle whose GLOBAL is posix.system with `touch <unique path>`: the file must not exist
    /// after the run, and (under strace) wsamerge starts no process at all.
    @Test func nothingIsExecuted() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let marker = dir + "/pwned-" + UUID().uuidString
        let command = Array("touch \(marker)".utf8)
        var pickle: [UInt8] = [0x80, 0x02, 0x63] + Array("posix\nsystem\n".utf8) + [0x58]
        pickle += withUnsafeBytes(of: UInt32(command.count).littleEndian) { Array($0) } + command + [0x85, 0x52, 0x2E]
        try TestSupport.pythonOK("""
        import zipfile
        with zipfile.ZipFile(sys.argv[1], "w") as z:
            z.writestr("archive/data.pkl", bytes.fromhex(sys.argv[2]))
            z.writestr("archive/byteorder", b"little")
        # Control: Python's own unpickler does run it, so the file is a real test of execution.
        import pickle as p
        p.loads(bytes.fromhex(sys.argv[2]))
        assert os.path.exists(sys.argv[3])
        os.remove(sys.argv[3])
        """, [dir + "/evil.pt", pickle.map { String(format: "%02x", $0) }.joined(), marker])
        #expect(!TestSupport.fileExists(marker))
        for command in ["inspect", "stats"] {
            TestSupport.expectRefusal(try TestSupport.wsamerge([command, dir + "/evil.pt"]), code: 65, mentions: ["'posix.system'"])
        }
        for (file, _) in Self.refusals { _ = try TestSupport.wsamerge(["stats", Self.dir + "/" + file]) }
        #expect(!TestSupport.fileExists(marker), "the payload ran")
        for name in ["os_system", "posix_system", "builtins_eval", "stack_global", "stack_global_memo", "inst", "raw_pickle"] {
            #expect(!TestSupport.fileExists("/tmp/wsamerge-pwned-" + name), "the payload of \(name) ran")
        }
        // No process: strace sees wsamerge's own execve and no fork/vfork/clone without CLONE_THREAD.
        let strace = "/usr/bin/strace"
        guard FileManager.default.isExecutableFile(atPath: strace) else {
            Issue.record("strace is needed to watch for processes (make deps installs it)")
            return
        }
        let log = dir + "/strace.log"
        _ = try TestSupport.run(strace, ["-f", "-o", log, "-e", "trace=execve,execveat,fork,vfork,clone,clone3",
                                         TestSupport.binary, "stats", dir + "/evil.pt"])
        let lines = (try String(contentsOfFile: log, encoding: .utf8)).split(separator: "\n")
        #expect(lines.filter { $0.contains("execve(") }.count == 1, "\(lines)")
        let spawns = lines.filter { ($0.contains("clone(") || $0.contains("clone3(")) && !$0.contains("CLONE_THREAD") || $0.contains("fork(") }
        #expect(spawns.isEmpty, "\(spawns)")
        #expect(!TestSupport.fileExists(marker))
    }
}
