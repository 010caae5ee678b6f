import Foundation
import Testing

/// End-to-end tests of `fuse`: every strategy against the independent numpy float64 reference
/// (fixtures/reference_merge.py, within 1 ulp of the output dtype), options, plan errors,
/// determinism and interop.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct FuseTests {
    static let m = TestSupport.fixtures + "/merge"
    static let f32 = [m + "/a.safetensors", m + "/b.safetensors", m + "/c.npz"]
    static let bf16 = [m + "/a_bf16.safetensors", m + "/b_bf16.safetensors", m + "/c_bf16.safetensors"]
    static let fisher = [m + "/fisher_a.safetensors", m + "/fisher_b.safetensors", m + "/fisher_c.safetensors"]
    /// `--fisher F` once per input.
    static let fisherArgs = fisher.flatMap { ["--fisher", $0] }

    /// Runs fuse into a temporary directory, then the reference on the output.
    func fuseMatchesReference(inputs: [String], strategy: String, options: [String] = [],
                              sourceLocation: SourceLocation = #_sourceLocation) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/merged.safetensors"
        var fisherArgs: [String] = []
        if strategy == "fisher" { fisherArgs = Self.fisherArgs }
        let run = try TestSupport.wsamerge(["fuse", "--strategy", strategy] + inputs + fisherArgs + options + ["-o", out])
        #expect(run.status == 0, "\(run.stderr)", sourceLocation: sourceLocation)
        let reference = try TestSupport.pythonFile(TestSupport.fixtures + "/reference_merge.py", [out,
                                                                 "--strategy", strategy, "--inputs"] + inputs + fisherArgs + options)
        #expect(reference.status == 0, "reference: \(reference.stdout) \(reference.stderr)", sourceLocation: sourceLocation)
        #expect(reference.stdout.contains("max_ulp"), sourceLocation: sourceLocation)
    }

    @Test(arguments: ["average", "fisher", "wsa"])
    func strategyMatchesReferenceF32(_ strategy: String) throws {
        try fuseMatchesReference(inputs: Self.f32, strategy: strategy)
    }

    @Test(arguments: ["average", "fisher", "wsa"])
    func strategyMatchesReferenceBF16(_ strategy: String) throws {
        try fuseMatchesReference(inputs: Self.bf16, strategy: strategy)
    }

    @Test(arguments: [
        ["--wsa-rescale", "output"], ["--wsa-rescale", "both"], ["--scope-fusion", "quadratic"],
        ["--scope-fusion", "mixture", "--weights", "1,2,3"], ["--wsa-min-rank", "1", "--dtype", "F16"],
        ["--weights", "0,1,1", "--dtype", "BF16"],
    ])
    func wsaOptionsMatchReference(_ options: [String]) throws {
        try fuseMatchesReference(inputs: Self.f32, strategy: "wsa", options: options)
    }

    @Test(arguments: [["--fisher-normalize", "none"], ["--fisher-epsilon", "0.01"], ["--weights", "3,1,1"]])
    func fisherOptionsMatchReference(_ options: [String]) throws {
        try fuseMatchesReference(inputs: Self.f32, strategy: "fisher", options: options)
    }

    /// Weights whose sum overflows (each finite) are the same ratios as small ones: the merge
    /// matches the reference with weights 1, 2, 1 (they once normalised to zeros).
    @Test(arguments: ["average", "fisher", "wsa"])
    func hugeWeightsKeepTheirRatios(_ strategy: String) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/merged.safetensors", fisher = strategy == "fisher" ? Self.fisherArgs : []
        let run = try TestSupport.wsamerge(["fuse", "--strategy", strategy] + Self.f32 + fisher + ["--weights", "8e307,1.6e308,8e307", "-o", out])
        #expect(run.status == 0, "\(run.stderr)")
        let reference = try TestSupport.pythonFile(TestSupport.fixtures + "/reference_merge.py", [out, "--strategy", strategy,
                                                                 "--inputs"] + Self.f32 + fisher + ["--weights", "1,2,1"])
        #expect(reference.status == 0 && reference.stdout.contains("max_ulp"), "reference: \(reference.stdout) \(reference.stderr)")
    }

    @Test func averageWithWeightsAndDType() throws {
        try fuseMatchesReference(inputs: Self.bf16, strategy: "average", options: ["--weights", "0.2,0.3,0.5", "--dtype", "F32"])
    }

    @Test func targetScopeFromScopeCommand() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let target = dir + "/target.json"
        // A target fused from two models, applied to a merge of three.
        let scope = try TestSupport.wsamerge(["scope", Self.f32[0], Self.f32[1], "--scope-fusion", "quadratic", "-o", target])
        #expect(scope.status == 0, "\(scope.stderr)")
        try fuseMatchesReference(inputs: Self.f32, strategy: "wsa", options: ["--target-scope", target])
    }

    @Test(arguments: ["average", "fisher", "wsa"])
    func mergingCopiesReturnsTheInput(_ strategy: String) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let a = Self.f32[0]
        var args = ["fuse", "--strategy", strategy, a, a, a, "-o", dir + "/out.safetensors"]
        if strategy == "fisher" { args += Self.fisherArgs }
        let run = try TestSupport.wsamerge(args)
        #expect(run.status == 0, "\(run.stderr)")
        let check = try TestSupport.python("""
            import sys; from safetensors.numpy import load_file
            a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
            assert a.keys() == b.keys()
            for k in a: assert a[k].tobytes() == b[k].tobytes(), k
            """, [a, dir + "/out.safetensors"])
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test(arguments: [["--strategy", "wsa"], ["--strategy", "fisher"] + fisherArgs, ["--strategy", "average"]])
    func outputIsByteIdenticalAcrossRunsJobsAndSIMDLevels(strategy: [String]) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        var outputs: [Data] = []
        // WSAMERGE_SIMD caps the kernels' instruction set ("avx512" is the best level, also where the CPU lacks it).
        for (i, (jobs, level)) in [("1", "avx512"), ("4", "avx512"), ("1", "baseline"), ("2", "avx2")].enumerated() {
            let out = dir + "/m\(i).safetensors"
            let run = try TestSupport.wsamerge(["fuse", "--jobs", jobs] + Self.bf16 + strategy + ["-o", out],
                                               environment: ["WSAMERGE_SIMD": level])
            #expect(run.status == 0, "\(run.stderr)")
            outputs.append(try Data(contentsOf: URL(fileURLWithPath: out)))
        }
        #expect(outputs[0] == outputs[1])
        #expect(outputs[0] == outputs[2])
        #expect(outputs[0] == outputs[3])
    }

    /// `--fisher` is given once per input, so options and inputs come in any order.
    @Test func fisherFilesAndInputsInAnyOrder() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let orders: [[String]] = [
            Self.f32 + Self.fisherArgs,
            Self.fisherArgs + Self.f32,
            [Self.f32[0], "--fisher", Self.fisher[0], Self.f32[1], "--fisher", Self.fisher[1], Self.f32[2], "--fisher", Self.fisher[2]],
        ]
        var outputs: [Data] = []
        for (k, order) in orders.enumerated() {
            let out = dir + "/m\(k).safetensors"
            let run = try TestSupport.wsamerge(["fuse", "--strategy", "fisher"] + order + ["-o", out])
            #expect(run.status == 0, "\(run.stderr)")
            outputs.append(try Data(contentsOf: URL(fileURLWithPath: out)))
        }
        #expect(outputs[0] == outputs[1] && outputs[0] == outputs[2])
    }

    @Test func unknownSIMDLevelIsAUsageError() throws {
        let run = try TestSupport.wsamerge(["stats", Self.f32[0]], environment: ["WSAMERGE_SIMD": "sse2"])
        #expect(run.status == 64)
        #expect(run.stderr == "wsamerge: error: WSAMERGE_SIMD: unknown level 'sse2' (expected one of baseline, avx2, avx512)\n")
        #expect(run.stdout.isEmpty)
        // Empty is unset.
        #expect(try TestSupport.wsamerge(["stats", Self.f32[0]], environment: ["WSAMERGE_SIMD": ""]).status == 0)
    }

    @Test func metadataAndReportCarryProvenance() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/m.safetensors"
        let run = try TestSupport.wsamerge(["fuse", "--strategy", "wsa", "--weights", "1,1,2", "--metadata", "run=7"] + Self.f32 + ["-o", out])
        #expect(run.status == 0, "\(run.stderr)")
        let report = try #require(try run.json() as? [String: Any])
        #expect(report["strategy"] as? String == "wsa")
        #expect(report["weights"] as? [Double] == [0.25, 0.25, 0.5])
        let tensors = try #require(report["tensors"] as? [[String: Any]])
        let norm = try #require(tensors.first { $0["name"] as? String == "model.layers.0.norm.weight" })
        #expect((norm["method"] as? String)?.hasPrefix("average") == true)
        let mlp = try #require(tensors.first { $0["name"] as? String == "model.layers.0.mlp.weight" })
        #expect(mlp["method"] as? String == "wsa-rescale-inputs")
        #expect((mlp["fused"] as? [String: Double])?["std"] != nil)
        let check = try TestSupport.python("""
            import sys, json; from safetensors import safe_open
            m = safe_open(sys.argv[1], "np").metadata()
            assert m["format"] == "pt", m
            assert m["wsamerge.strategy"] == "wsa" and m["run"] == "7", m
            assert json.loads(m["wsamerge.inputs"]) == sys.argv[2:], m
            assert json.loads(m["wsamerge.weights"]) == [0.25, 0.25, 0.5], m
            p = json.loads(m["wsamerge.parameters"])
            assert p["scope_fusion"] == "linear" and p["weight"] == [1, 1, 2] and "wsamerge.version" in m, m
            """, [out] + Self.f32)
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test func npzAndShardedOutputs() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let npz = try TestSupport.wsamerge(["fuse"] + Self.f32 + ["-o", dir + "/m.npz", "--compress"])
        #expect(npz.status == 0, "\(npz.stderr)")
        let sharded = try TestSupport.wsamerge(["fuse"] + Self.f32 + ["-o", dir + "/shards", "--max-shard-size", "10kB"])
        #expect(sharded.status == 0, "\(sharded.stderr)")
        let single = try TestSupport.wsamerge(["fuse"] + Self.f32 + ["-o", dir + "/m.safetensors"])
        #expect(single.status == 0)
        let check = try TestSupport.python("""
            import sys, json, numpy as np, glob, os
            from safetensors.numpy import load_file
            ref = load_file(sys.argv[1] + "/m.safetensors")
            z = np.load(sys.argv[1] + "/m.npz", allow_pickle=False)
            assert sorted(z.files) == sorted(ref), z.files
            for k in ref: assert z[k].tobytes() == ref[k].tobytes(), k
            idx = json.load(open(sys.argv[1] + "/shards/model.safetensors.index.json"))
            shards = sorted(set(idx["weight_map"].values()))
            assert len(shards) > 1 and shards[0].endswith("-of-%05d.safetensors" % len(shards)), shards
            got = {}
            for s in shards: got.update(load_file(sys.argv[1] + "/shards/" + s))
            assert got.keys() == ref.keys()
            for k in ref: assert got[k].tobytes() == ref[k].tobytes(), k
            assert idx["metadata"]["total_size"] == sum(v.nbytes for v in ref.values())
            """, [dir])
        #expect(check.status == 0, "\(check.stderr)")
        // The sharded directory is itself a valid input.
        let stats = try TestSupport.wsamerge(["inspect", dir + "/shards"])
        #expect(stats.status == 0)
    }

    @Test func missingTensorsErrorIntersectionUnion() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let lacking = dir + "/b_missing.safetensors"
        #expect(try TestSupport.wsamerge(["convert", Self.f32[1], "-o", lacking, "--exclude", "layers\\.1\\."]).status == 0)
        let out = dir + "/m.safetensors"
        let refused = try TestSupport.wsamerge(["fuse", Self.f32[0], lacking, "-o", out])
        TestSupport.expectRefusal(refused, code: 65, mentions: ["model.layers.1.attn.weight", "b_missing.safetensors", "--on-missing"])
        #expect(!TestSupport.fileExists(out))
        let intersection = try TestSupport.wsamerge(["fuse", Self.f32[0], lacking, "-o", out, "--on-missing", "intersection"])
        #expect(intersection.status == 0, "\(intersection.stderr)")
        #expect((try intersection.json() as? [String: Any])?["tensor_count"] as? Int == 5)
        let union = try TestSupport.wsamerge(["fuse", Self.f32[0], lacking, "-o", out, "--force", "--on-missing", "union"])
        #expect(union.status == 0, "\(union.stderr)")
        let report = try #require(try union.json() as? [String: Any])
        #expect(report["tensor_count"] as? Int == 6)
        let tensors = try #require(report["tensors"] as? [[String: Any]])
        // A float tensor only one input has goes through the strategy (so --dtype applies to it).
        let lone = tensors.first { $0["name"] as? String == "model.layers.1.attn.weight" }
        #expect(lone?["method"] as? String == "average")
        let dtype = try TestSupport.wsamerge(["fuse", Self.f32[0], lacking, "-o", dir + "/f16.safetensors", "--on-missing", "union",
                                              "--dtype", "F16"])
        let dtypes = ((try dtype.json() as? [String: Any])?["tensors"] as? [[String: Any]] ?? []).map { $0["dtype"] as? String }
        #expect(dtypes == ["I64", "F16", "F16", "F16", "F16", "F16"])
    }

    /// `--on-missing union` with a base: a tensor no input holds is the base's, for every method
    /// with a base (slerp, nearswap and arcee_fusion crashed on it, reading an input that was not
    /// there); one that fewer inputs hold than the method merges is refused, naming it and the
    /// input; one the base lacks is refused with a hint that only intersection helps.
    @Test func unionAgainstABase() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let lacking = dir + "/b_missing.safetensors", name = "model.layers.1.attn.weight"
        #expect(try TestSupport.wsamerge(["convert", Self.f32[1], "-o", lacking, "--exclude", "layers\\.1\\."]).status == 0)
        let methods: [(String, [String])] = [("slerp", ["--param", "t=0.5"]), ("nearswap", ["--param", "t=0.5"]), ("arcee_fusion", []),
                                             ("ties", ["--weights", "1", "--param", "density=0.5"]), ("ram", []), ("multislerp", ["--weights", "1"])]
        for (method, options) in methods {
            let out = dir + "/\(method).safetensors"
            let run = try TestSupport.wsamerge(["fuse", "--strategy", method, "--base", Self.f32[0], lacking, "--on-missing", "union",
                                                "--dtype", "F16", "-o", out] + options)
            #expect(run.status == 0, "\(method): \(run.stderr)")
            let tensors = (try run.json() as? [String: Any])?["tensors"] as? [[String: Any]] ?? []
            #expect(tensors.first { $0["name"] as? String == name }?["method"] as? String == "base (no input holds it)", "\(method)")
            let same = try TestSupport.python("""
                import sys, numpy as np
                from safetensors.numpy import load_file
                a, b = load_file(sys.argv[1])[sys.argv[3]], load_file(sys.argv[2])[sys.argv[3]]
                assert b.dtype == np.float16 and np.array_equal(a.astype(np.float16), b), (a, b)
                """, [Self.f32[0], out, name])
            #expect(same.status == 0, "\(method): \(same.stderr)")
        }
        let stock = try TestSupport.wsamerge(["fuse", "--strategy", "model_stock", "--base", Self.f32[0], Self.f32[2], lacking,
                                              "--on-missing", "union", "-o", dir + "/stock.safetensors"])
        TestSupport.expectRefusal(stock, code: 65, mentions: [name, "b_missing.safetensors", "model_stock", "at least 2 inputs (1 hold"])
        let baseLacks = try TestSupport.wsamerge(["fuse", "--strategy", "ties", "--base", lacking, Self.f32[0], "--weights", "1",
                                                  "--on-missing", "union", "-o", dir + "/lacks.safetensors"])
        TestSupport.expectRefusal(baseLacks, code: 65, mentions: [name, "missing from the base", "--on-missing intersection to leave them out"])
        #expect(!baseLacks.stderr.contains("or union"))
    }

    /// Merged values finite in float64 that overflow the output dtype when rounded (F16 from F32
    /// inputs, F32 from F32 ones) count as non-finite: a warning, and refused under --strict
    /// (both were written as ∞ silently).
    @Test func overflowInTheOutputDTypeIsNonFinite() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
            from safetensors.numpy import save_file
            save_file({"w": np.full((4, 4), 40000, np.float32)}, sys.argv[1] + "/x.safetensors")
            save_file({"w": np.full((4, 4), 3e38, np.float32)}, sys.argv[1] + "/big.safetensors")
            """, [dir])
        for (file, dtype) in [("x", ["--dtype", "F16"]), ("big", [])] {
            let inputs = [dir + "/\(file).safetensors", dir + "/\(file).safetensors"]
            let strict = try TestSupport.wsamerge(["fuse", "--strict", "--param", "normalize=false"] + inputs + ["-o", dir + "/s.safetensors"] + dtype)
            TestSupport.expectRefusal(strict, code: 65, mentions: ["tensor 'w'", "NaN or infinite as F", "every input is finite"])
            #expect(!TestSupport.fileExists(dir + "/s.safetensors"))
            let warned = try TestSupport.wsamerge(["fuse", "--param", "normalize=false"] + inputs + ["-o", dir + "/\(file)-out.safetensors"] + dtype)
            #expect(warned.status == 0 && warned.stderr.contains("NaN or infinite values") && warned.stderr.contains(": w"), "\(warned.stderr)")
        }
    }

    /// Negative weights parse as written (`--weights -0.5,1`: task negation), like `--weights=-0.5,1`.
    @Test func negativeWeightsParseAsWritten() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let m = TestSupport.fixtures + "/methods"
        var outputs: [[UInt8]] = []
        for spelling in [["--weights", "-0.5,1"], ["--weights=-0.5,1"]] {
            let out = dir + "/\(outputs.count).safetensors"
            let run = try TestSupport.wsamerge(["fuse", "--strategy", "task_arithmetic", "--base", m + "/base.safetensors", m + "/ft0.safetensors",
                                                m + "/ft1.safetensors", "-o", out] + spelling)
            #expect(run.status == 0, "\(spelling): \(run.stderr)")
            #expect((try run.json() as? [String: Any])?["weights"] as? [Double] == [-0.5, 1])
            outputs.append(Array(try Data(contentsOf: URL(fileURLWithPath: out))))
        }
        #expect(outputs[0] == outputs[1])
    }

    /// A variant of model b written by Python: `edit` is Python code changing dict `t`.
    func variant(_ dir: String, _ name: String, from source: String, _ edit: String) throws -> String {
        let path = dir + "/" + name
        let run = try TestSupport.python("""
            import sys, numpy as np, ml_dtypes
            from safetensors.numpy import load_file, save_file
            t = load_file(sys.argv[1])
            \(edit)
            save_file(t, sys.argv[2], metadata={"format": "pt"})
            """, [source, path])
        #expect(run.status == 0, "\(run.stderr)")
        return path
    }

    @Test func planErrorsWriteNothing() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let out = dir + "/never.safetensors"
        let a = Self.f32[0], b = Self.f32[1]
        let reshaped = try variant(dir, "reshaped.safetensors", from: b,
                                   "t['model.layers.0.attn.weight'] = t['model.layers.0.attn.weight'].reshape(24, 16)")
        let step = try variant(dir, "step.safetensors", from: b, "t['step'] = np.array(7, dtype=np.int64)")
        let negative = try variant(dir, "neg.safetensors", from: Self.fisher[1],
                                   "x = t['model.layers.0.mlp.weight'].copy(); x[1, 2] = -1; t['model.layers.0.mlp.weight'] = x")
        let notFinite = try variant(dir, "nan.safetensors", from: Self.fisher[0],
                                    "x = t['model.embed.weight'].copy(); x[3, 4] = np.nan; t['model.embed.weight'] = x")
        let cases: [([String], Int32, [String])] = [
            (["fuse", a, reshaped], 65, ["model.layers.0.attn.weight", "shape"]),
            (["fuse", a, step], 65, ["'step'", "differ"]),
            (["fuse", "--strategy", "fisher", a, b, "--fisher", Self.fisher[0], "--fisher", negative], 65, ["model.layers.0.mlp.weight", "≥ 0", "found -1"]),
            (["fuse", "--strategy", "fisher", a, b, "--fisher", notFinite, "--fisher", Self.fisher[1]], 65, ["model.embed.weight", "finite"]),
            (["fuse", "--strategy", "fisher", a, b, "--fisher", Self.fisher[0]], 64, ["1 fisher file(s) for 2 inputs", "--fisher"]),
            (["fuse", "--strategy", "fisher", a, b], 64, ["--fisher"]),
            (["fuse", "--strategy", "wsa", a, b, "--weights", "1,-1"], 64, ["non-negative", "--weights"]),
            (["fuse", a, b, "--weights", "1,-1"], 64, ["sum to 0", "--weights"]),
            (["fuse", "--strategy", "fisher", a, b, "--weights", "0,0"] + Self.fisherArgs.prefix(4), 64, ["positive sum"]),
            (["fuse", a, b, "--weights", "1,2,3"], 64, ["3 values for 2 inputs", "--weights"]),
            (["fuse", a, b, "--param", "nonsense=1"], 64, ["average has no parameter 'nonsense' (its parameters: weight, normalize)"]),
            (["fuse", "--strategy", "median", a, b], 64, ["median"]),
            (["fuse", a, b, "--dtype", "I32"], 64, ["--dtype"]),
            (["fuse", a, dir + "/absent.safetensors"], 66, ["absent.safetensors"]),
            (["fuse", "--target-scope", dir + "/t.json", a, b], 64, ["average reads no target_scope file"]),
            (["fuse", "--strategy", "wsa", "--fisher-epsilon", "0.1", a, b], 64, ["wsa has no parameter 'fisher_epsilon'"]),
            (["fuse", "--strategy", "wsa", "--fisher", a, a, b], 64, ["wsa reads no fisher file"]),
        ]
        for (args, code, mentions) in cases {
            let run = try TestSupport.wsamerge(args + ["-o", out])
            TestSupport.expectRefusal(run, code: code, mentions: mentions)
            #expect(!TestSupport.fileExists(out), "\(args)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["nan.safetensors", "neg.safetensors", "reshaped.safetensors", "step.safetensors"])
    }

    @Test func outputMayNotBeAnInput() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let copy = dir + "/a.safetensors"
        try FileManager.default.copyItem(atPath: Self.f32[0], toPath: copy)
        let before = try Data(contentsOf: URL(fileURLWithPath: copy))
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.safetensors", withDestinationPath: copy)
        try FileManager.default.linkItem(atPath: copy, toPath: dir + "/hard.safetensors")
        for target in [copy, dir + "/link.safetensors", dir + "/hard.safetensors"] {
            let run = try TestSupport.wsamerge(["fuse", copy, Self.f32[1], "-o", target, "--force"])
            TestSupport.expectRefusal(run, code: 73, mentions: ["one of the inputs"])
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == before)
        let exists = try TestSupport.wsamerge(["fuse", Self.f32[0], Self.f32[1], "-o", dir + "/hard.safetensors"])
        TestSupport.expectRefusal(exists, code: 73, mentions: ["--force"])
    }

    @Test func outputMayNotBeAFisherOrTargetFile() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let fisher = dir + "/fa.safetensors"
        try FileManager.default.copyItem(atPath: Self.fisher[0], toPath: fisher)
        let run = try TestSupport.wsamerge(["fuse", "--strategy", "fisher", Self.f32[0], Self.f32[1], "--fisher", fisher, "--fisher", Self.fisher[1],
                                            "-o", fisher, "--force"])
        TestSupport.expectRefusal(run, code: 73, mentions: ["one of the inputs"])
        let target = dir + "/t.json"
        #expect(try TestSupport.wsamerge(["scope", Self.f32[0], Self.f32[1], "-o", target]).status == 0)
        let wsa = try TestSupport.wsamerge(["fuse", "--strategy", "wsa", "--target-scope", target, Self.f32[0], Self.f32[1],
                                            "-o", target, "--force"])
        TestSupport.expectRefusal(wsa, code: 73, mentions: ["one of the inputs"])
    }

    /// `--dry-run` runs the output format's checks too: a .npy of several tensors, BF16 in .npz.
    @Test func dryRunChecksTheOutputFormat() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let npy = try TestSupport.wsamerge(["fuse", "--dry-run"] + Self.f32 + ["-o", dir + "/m.npy"])
        TestSupport.expectRefusal(npy, code: 64, mentions: ["holds one array"])
        let npz = try TestSupport.wsamerge(["fuse", "--dry-run"] + Self.bf16 + ["-o", dir + "/m.npz"])
        TestSupport.expectRefusal(npz, code: 65, mentions: ["numpy cannot represent BF16", "--dtype F32"])
        #expect(try TestSupport.wsamerge(["fuse", "--dry-run"] + Self.bf16 + ["-o", dir + "/m.npz", "--dtype", "F32"]).status == 0)
    }

    /// `--dry-run --format table` prints the plan as a table (it printed JSON).
    @Test func dryRunPrintsATable() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let run = try TestSupport.wsamerge(["fuse", "--dry-run", "--format", "table"] + Self.f32 + ["-o", dir + "/m.safetensors"])
        #expect(run.status == 0, "\(run.stderr)")
        let lines = run.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("name") == true && lines.first?.contains("action") == true, "\(run.stdout)")
        #expect(lines.contains { $0.hasPrefix("model.embed.weight") && $0.contains("[16, 32]") && $0.hasSuffix("merge") })
        #expect(!TestSupport.fileExists(dir + "/m.safetensors"))
    }

    @Test func dryRunPrintsThePlanAndWritesNothing() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let run = try TestSupport.wsamerge(["fuse", "--dry-run", "--include", "attn"] + Self.f32 + ["-o", dir + "/m.safetensors"])
        #expect(run.status == 0, "\(run.stderr)")
        let plan = try #require(try run.json() as? [String: Any])
        #expect(plan["dry_run"] as? Bool == true)
        let actions = (plan["tensors"] as? [[String: Any]] ?? []).map { ($0["name"] as! String, $0["action"] as! String) }
        #expect(actions.filter { $0.1 == "merge" }.map(\.0) == ["model.layers.0.attn.weight", "model.layers.1.attn.weight"])
        #expect(actions.contains { $0.0 == "model.embed.weight" && $0.1.hasPrefix("copy: excluded") })
        #expect(!TestSupport.fileExists(dir + "/m.safetensors"))
    }

    @Test func nonFiniteInputsWarnOrRefuseWithStrict() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let nan = try variant(dir, "nan.safetensors", from: Self.f32[1],
                              "x = t['model.embed.weight'].copy(); x[0, 0] = np.nan; t['model.embed.weight'] = x")
        let warned = try TestSupport.wsamerge(["fuse", Self.f32[0], nan, "-o", dir + "/m.safetensors"])
        #expect(warned.status == 0)
        #expect(warned.stderr.contains("warning") && warned.stderr.contains("model.embed.weight"))
        let strict = try TestSupport.wsamerge(["fuse", "--strict", Self.f32[0], nan, "-o", dir + "/s.safetensors"])
        TestSupport.expectRefusal(strict, code: 65, mentions: [nan + ": tensor 'model.embed.weight'", "strict mode"])
        #expect(!TestSupport.fileExists(dir + "/s.safetensors"))
        // Finite inputs whose merge overflows: the output is named, not an input.
        let methods = TestSupport.fixtures + "/methods/"
        let overflow = try TestSupport.wsamerge(["fuse", "--strict", "--strategy", "slerp", "--param", "t=1e308", "--base",
                                                 methods + "slerp_a.safetensors", methods + "slerp_c.safetensors", "-o", dir + "/o.safetensors"])
        TestSupport.expectRefusal(overflow, code: 65, mentions: [dir + "/o.safetensors: tensor", "every input is finite"])
        #expect(!overflow.stderr.contains("slerp_a"))
        #expect(!TestSupport.fileExists(dir + "/o.safetensors"))
    }

    /// `fuse --format table` prints name, dtype and method per tensor instead of the JSON report.
    @Test func reportAsATable() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let run = try TestSupport.wsamerge(["fuse", "--strategy", "wsa", "--format", "table"] + Self.f32 + ["-o", dir + "/m.safetensors"])
        #expect(run.status == 0, "\(run.stderr)")
        let lines = run.stdout.split(separator: "\n")
        #expect(lines.first?.split(separator: " ", omittingEmptySubsequences: true) == ["name", "dtype", "method"])
        #expect(lines.contains { $0.contains("model.layers.0.mlp.weight") && $0.contains("wsa-rescale-inputs") })
        #expect(!run.stdout.contains("{"))
    }

    @Test func strategiesListsTheRegistry() throws {
        let run = try TestSupport.wsamerge(["strategies"])
        let list = try #require(try run.json() as? [[String: Any]])
        let names = list.compactMap { $0["identifier"] as? String }
        #expect(Array(names.prefix(3)) == ["average", "fisher", "wsa"])
        for method in ["task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della_linear", "della", "passthrough"] {
            #expect(names.contains(method), "\(method)")
        }
        let ties = try #require(list.first { $0["identifier"] as? String == "ties" })
        #expect(ties["base"] as? String == "required")
        let tiesParameters = try #require(ties["parameters"] as? [[String: Any]])
        #expect(tiesParameters.contains { $0["name"] as? String == "weight" && $0["required"] as? Bool == true })
        #expect(tiesParameters.contains { $0["name"] as? String == "normalize" && $0["default"] as? Bool == true })
        let wsa = try #require(list.first { $0["identifier"] as? String == "wsa" }?["parameters"] as? [[String: Any]])
        #expect(wsa.contains { $0["name"] as? String == "scope_fusion" && $0["default"] as? String == "linear"
            && $0["type"] as? String == "choice" && $0["scope"] as? String == "shared" })
        #expect(wsa.contains { $0["name"] as? String == "weight" && $0["scope"] as? String == "per_input" })
    }
}
