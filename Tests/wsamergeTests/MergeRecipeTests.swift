import Foundation
import Testing

/// `fuse --recipe`: mergekit's example recipes rewritten with fixture paths give the same bytes
/// as the equivalent command line, or for gradients and slices a numpy reference; `--print-recipe`
/// replays byte for byte; every mistake in a recipe names its line.
@Suite("Merge recipes (mergekit YAML)")
struct MergeRecipeTests {
    static let dir = TestSupport.fixtures + "/recipes"
    static func m(_ k: Int) -> String { dir + "/m\(k).safetensors" }

    /// The strategies the binary has (methods landing on main light up their tests).
    static let strategies: Set<String> = {
        guard let result = try? TestSupport.wsamerge(["strategies"]),
              let list = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else { return [] }
        return Set(list.compactMap { $0["identifier"] as? String })
    }()

    /// Writes `text` with `{M0}` … `{M3}` and `{DIR}` replaced by fixture paths.
    static func recipe(_ text: String, in tmp: String, name: String = "recipe.yml") throws -> String {
        var text = text.replacingOccurrences(of: "{DIR}", with: dir)
        for k in 0..<4 { text = text.replacingOccurrences(of: "{M\(k)}", with: m(k)) }
        let path = tmp + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @discardableResult
    static func fuse(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> TestSupport.Result {
        let result = try TestSupport.wsamerge(["fuse", "--quiet"] + arguments)
        #expect(result.status == 0, "fuse \(arguments): \(result.stderr)", sourceLocation: sourceLocation)
        return result
    }

    static func metadata(_ path: String) throws -> [String: String] {
        let out = try TestSupport.pythonOK("meta, _, _ = st_raw(sys.argv[1]); print(json.dumps(meta))", [path])
        return (try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: String]) ?? [:]
    }

    // MARK: Same bytes as the command line

    @Test("mergekit's linear example (three weights) gives the bytes of the equivalent flags")
    func linearThreeWeights() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            models:
              - model: {M1}
                parameters:
                  weight: 1.0
              - model: {M2}
                parameters:
                  weight: 0.3
              - model: {M3}
                parameters:
                  weight: 0.5
            merge_method: linear
            dtype: float16
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/recipe.safetensors"])
        let flags = [Self.m(1), Self.m(2), Self.m(3), "--strategy", "linear", "--weights", "1.0,0.3,0.5", "--dtype", "F16"]
        try Self.fuse(flags + ["-o", tmp + "/flags.safetensors"])
        let a = TestSupport.read(tmp + "/recipe.safetensors"), b = TestSupport.read(tmp + "/flags.safetensors")
        #expect(a != nil && a == b)
        let printed = try Self.fuse(flags + ["-o", tmp + "/unused.safetensors", "--print-recipe"]).stdout
        #expect(try Self.metadata(tmp + "/recipe.safetensors")["wsamerge.recipe"] == printed)
        #expect(!TestSupport.fileExists(tmp + "/unused.safetensors"))
    }

    @Test("--print-recipe, then --recipe, gives byte-identical output (average with base, filters, metadata, dtype; directory output)")
    func printRecipeRoundTrip() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let flags = [Self.m(1), Self.m(2), "--base", Self.m(0), "--strategy", "linear", "--weights", "2,1,0.25",
                     "--param", "normalize=false", "--exclude", "lm_head", "--include", "layers\\.[0-2]\\.|embed",
                     "--metadata", "run=7", "--dtype", "BF16"]
        let printed = try Self.fuse(flags + ["-o", tmp + "/a/", "--print-recipe"]).stdout
        #expect(printed.contains("base_model: ") && printed.contains("exclude: [\"lm_head\"]") && printed.contains("dtype: bfloat16"))
        try Self.fuse(flags + ["-o", tmp + "/a/"])
        let recipe = tmp + "/printed.yml"
        try printed.write(toFile: recipe, atomically: true, encoding: .utf8)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/b/"])
        let a = TestSupport.read(tmp + "/a/model.safetensors"), b = TestSupport.read(tmp + "/b/model.safetensors")
        #expect(a != nil && a == b)
        #expect(TestSupport.read(tmp + "/a/wsamerge_recipe.yml") == Array(printed.utf8))
        #expect(TestSupport.read(tmp + "/b/wsamerge_recipe.yml") == Array(printed.utf8))
        // The recipe's own --print-recipe is the same normalised text.
        #expect(try Self.fuse(["--recipe", recipe, "-o", tmp + "/c/", "--print-recipe"]).stdout == printed)
        // From standard input too.
        let piped = try TestSupport.run(TestSupport.binary, ["fuse", "--quiet", "--recipe", "-", "-o", tmp + "/d.safetensors"], stdin: printed)
        #expect(piped.status == 0, "\(piped.stderr)")
    }

    @Test("--print-recipe refuses an input given twice (a recipe cannot replay it); the merge itself takes it")
    func printRecipeRefusesDuplicates() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let flags = [Self.m(1), Self.m(2), Self.m(1), "--strategy", "linear", "-o", tmp + "/out.safetensors"]
        TestSupport.expectRefusal(try TestSupport.wsamerge(["fuse"] + flags + ["--print-recipe"]), code: 64,
                                  mentions: ["'\(Self.m(1))' is an input twice", "--weights"])
        #expect(try TestSupport.wsamerge(["fuse", "--quiet"] + flags).status == 0)
    }

    @Test("a seed of 2^53 or more replays from the printed recipe (integers read as integers)")
    func largeSeedRoundTrip() throws {
        guard Self.strategies.contains("dare_linear") else { return }
        let printed = try Self.replay([Self.m(1), Self.m(2), "--base", Self.m(0), "--strategy", "dare_linear", "--weights", "1,1",
                                       "--param", "density=0.5", "--seed", "9007199254740993"])
        #expect(printed.contains("seed: 9007199254740993"))
    }

    /// Merges with `flags`, then with the recipe `--print-recipe` gives for them: the same bytes.
    /// Returns the recipe.
    static func replay(_ flags: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let printed = try fuse(flags + ["-o", tmp + "/a.safetensors", "--print-recipe"]).stdout
        try fuse(flags + ["-o", tmp + "/a.safetensors"])
        let recipe = tmp + "/printed.yml"
        try printed.write(toFile: recipe, atomically: true, encoding: .utf8)
        try fuse(["--recipe", recipe, "-o", tmp + "/b.safetensors"])
        let a = TestSupport.read(tmp + "/a.safetensors"), b = TestSupport.read(tmp + "/b.safetensors")
        #expect(a != nil && a == b, sourceLocation: sourceLocation)
        return printed
    }

    @Test("a merge with no input besides the base prints a recipe that replays (the base listed as its model)")
    func baseOnlyRoundTrip() throws {
        guard Self.strategies.contains("ties") else { return }
        #expect(try Self.replay(["--base", Self.m(0), "--strategy", "ties"]).contains("models:"))
    }

    @Test("fisher and wsa recipes replay byte for byte (per-model fisher files, shared parameters)")
    func fisherAndWSARoundTrip() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let merge = TestSupport.fixtures + "/merge/"
        let runs: [[String]] = [
            [merge + "a.safetensors", merge + "b.safetensors", "--strategy", "fisher", "--fisher", merge + "fisher_a.safetensors",
             "--fisher", merge + "fisher_b.safetensors", "--fisher-epsilon", "1e-05", "--weights", "1,3"],
            [merge + "a.safetensors", merge + "b.safetensors", "--strategy", "wsa", "--scope-fusion", "quadratic", "--weights", "0.7,0.3"],
        ]
        for (i, flags) in runs.enumerated() {
            let printed = try Self.fuse(flags + ["-o", tmp + "/x.safetensors", "--print-recipe"]).stdout
            try Self.fuse(flags + ["-o", tmp + "/flags\(i).safetensors"])
            let recipe = tmp + "/r\(i).yml"
            try printed.write(toFile: recipe, atomically: true, encoding: .utf8)
            try Self.fuse(["--recipe", recipe, "-o", tmp + "/recipe\(i).safetensors"])
            let a = TestSupport.read(tmp + "/flags\(i).safetensors"), b = TestSupport.read(tmp + "/recipe\(i).safetensors")
            #expect(a != nil && a == b, "\(flags[3]): \(printed)")
        }
    }

    // MARK: Gradients, filters and slices against numpy

    /// numpy helpers: the layer position t and mergekit's gradient and filter rules.
    static let gradientPrelude = #"""
    import re
    def layer_of(name):
        parts = name.split(".")
        for i, p in enumerate(parts[:-1]):
            if p in ("layers", "layer", "h", "blocks") and parts[i + 1].isdigit():
                return int(parts[i + 1])
        return None
    def grad(v, t):
        if not isinstance(v, list): return float(v)
        if len(v) == 1: return float(v[0])
        x = min(max(t, 0.0), 1.0) * (len(v) - 1); i = int(np.floor(x))
        if i >= len(v) - 1: return float(v[-1])
        f = x - i
        return v[i] * (1 - f) + v[i + 1] * f
    def setting(s, name, t):
        if isinstance(s, list) and s and isinstance(s[0], dict):
            for e in s:
                if "filter" not in e or e["filter"] in name: return setting(e["value"], name, t)
            return None
        return grad(s, t)

    """#

    @Test("linear with weight gradients and a filter list matches numpy applying the per-layer weights")
    func linearGradients() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            merge_method: linear
            models:
              - model: {M1}
                parameters:
                  weight: [1, 0.5, 0]
              - model: {M2}
                parameters:
                  weight:
                    - filter: self_attn
                      value: [0, 1]
                    - filter: mlp
                      value: 0.25
                    - value: 1
              - model: {M3}
            parameters:
              weight: 0.5
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/out.safetensors"])
        try TestSupport.pythonOK(Self.gradientPrelude + #"""
        ms = [st_arrays(p) for p in sys.argv[1:4]]
        out = st_arrays(sys.argv[4])
        W = [[1, 0.5, 0], [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.25}, {"value": 1}], 0.5]
        L = 4
        assert list(out) == list(ms[0]), (list(out), list(ms[0]))
        for name in out:
            layer = layer_of(name); t = layer / (L - 1) if layer is not None else 0.0
            w = [setting(s, name, t) for s in W]
            # METHODS.md linear: Σ w_i x_i / Σ w_i with the weights as given.
            acc = w[0] * ms[0][name].astype(np.float64)
            for k in (1, 2): acc = acc + w[k] * ms[k][name].astype(np.float64)
            acc = acc / (w[0] + w[1] + w[2])
            assert out[name].dtype == np.float32 and out[name].tobytes() == acc.astype(np.float32).tobytes(), name
        """#, [Self.m(1), Self.m(2), Self.m(3), tmp + "/out.safetensors"])
    }

    @Test("passthrough slices stack layer ranges into a deeper model (mergekit's frankenmerge example)")
    func passthroughStacking() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            slices:
              - sources:
                - model: {M1}
                  layer_range: [0, 3]
              - sources:
                - model: {M2}
                  layer_range: [1, 4]
            merge_method: passthrough
            dtype: float16
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/out/"])
        try TestSupport.pythonOK(Self.gradientPrelude + #"""
        a, b = st_arrays(sys.argv[1]), st_arrays(sys.argv[2])
        out = st_arrays(sys.argv[3])
        expected = {}
        for name, v in a.items():  # as mergekit: embeddings from the first slice's model, the rest from the last's
            if layer_of(name) is None: expected[name] = v if "embed" in name else b[name]
        plan = [(a, 0), (a, 1), (a, 2), (b, 1), (b, 2), (b, 3)]
        for new, (src, old) in enumerate(plan):
            for name, v in src.items():
                if layer_of(name) == old:
                    expected[re.sub(r"layers\.\d+\.", f"layers.{new}.", name, count=1)] = v
        assert sorted(out) == sorted(expected), (sorted(out), sorted(expected))
        for name, v in expected.items():
            assert out[name].dtype == np.float16 and out[name].tobytes() == v.astype(np.float16).tobytes(), name
        meta, _, _ = st_raw(sys.argv[3])
        assert meta["wsamerge.strategy"] == "passthrough" and "layer_range: [1, 4]" in meta["wsamerge.recipe"], meta
        """#, [Self.m(1), Self.m(2), tmp + "/out"])
        #expect(TestSupport.fileExists(tmp + "/out/wsamerge_recipe.yml"))
    }

    @Test("an empty slice (layer_range [a, a]) adds no layer, and as the last slice still gives the head (as mergekit, byte for byte)")
    func emptySlice() throws {
        try Self.expectSliceMerge("""
            merge_method: passthrough
            slices:
              - sources:
                  - model: {M1}
                    layer_range: [1, 1]
              - sources:
                  - model: {M2}
                    layer_range: [0, 2]
              - sources:
                  - model: {M3}
                    layer_range: [4, 4]
            """, check: #"""
        expected = {}
        for name, v in m1.items():
            layer = layer_of(name)
            if layer is None: expected[name] = v if "embed" in name else m3[name]
            elif layer < 2: expected[name] = m2[name]
        assert sorted(out) == sorted(expected), (sorted(out), sorted(expected))
        for name, v in expected.items():
            assert out[name].tobytes() == v.tobytes(), name
        """#)
    }

    @Test("a model with tied embeddings (no head of its own) as the first or last of a stack is refused, naming the head")
    func tiedEmbeddingsInAStack() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        try TestSupport.pythonOK("""
            from safetensors.numpy import load_file, save_file
            save_file({k: v for k, v in load_file(sys.argv[1]).items() if k != "lm_head.weight"}, sys.argv[2])
            """, [Self.m(2), tmp + "/tied.safetensors"])
        for (first, last) in [(Self.m(1), tmp + "/tied.safetensors"), (tmp + "/tied.safetensors", Self.m(1))] {
            let recipe = try Self.recipe("merge_method: passthrough\nslices:\n  - sources:\n      - model: \(first)\n        layer_range: [0, 2]\n"
                                         + "  - sources:\n      - model: \(last)\n        layer_range: [2, 4]\n", in: tmp)
            let run = try TestSupport.wsamerge(["fuse", "--recipe", recipe, "-o", tmp + "/out.safetensors"])
            TestSupport.expectRefusal(run, code: 65, mentions: [tmp + "/tied.safetensors: tensor 'lm_head.weight': ", "(tied embeddings?)"])
            #expect(!TestSupport.fileExists(tmp + "/out.safetensors"))
        }
    }

    @Test("with only slice bases, a directory output gets the first slice's base's files")
    func sliceBaseGivesTheFiles() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            merge_method: ties
            slices:
              - sources:
                  - model: {M1}
                    layer_range: [0, 4]
                  - model: {DIR}/basedir
                    layer_range: [0, 4]
                base_model: {DIR}/basedir
            parameters: {weight: 1, density: 0.5}
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/out/"])
        #expect(TestSupport.read(tmp + "/out/tokenizer.json") == TestSupport.read(Self.dir + "/basedir/tokenizer.json"))
    }

    @Test("strip_prefix applies to the models of slices as to models")
    func slicesStripPrefixes() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        try TestSupport.pythonOK("""
            from safetensors.numpy import load_file, save_file
            for source, target in zip(sys.argv[1::2], sys.argv[2::2]):
                save_file({"module." + k: v for k, v in load_file(source).items()}, target)
            """, [Self.m(1), tmp + "/p1.safetensors", Self.m(2), tmp + "/p2.safetensors"])
        func stack(_ first: String, _ second: String, strip: Bool) throws -> String {
            let recipe = try Self.recipe("""
                slices:
                  - sources:
                    - model: \(first)
                      layer_range: [0, 2]
                  - sources:
                    - model: \(second)
                      layer_range: [1, 3]
                merge_method: passthrough
                \(strip ? "strip_prefix: [module.]" : "")
                """, in: tmp, name: strip ? "stripped.yml" : "plain.yml")
            let out = tmp + (strip ? "/stripped.safetensors" : "/plain.safetensors")
            try Self.fuse(["--recipe", recipe, "-o", out])
            return out
        }
        let plain = try stack(Self.m(1), Self.m(2), strip: false)
        let stripped = try stack(tmp + "/p1.safetensors", tmp + "/p2.safetensors", strip: true)
        try TestSupport.pythonOK("""
            from safetensors.numpy import load_file
            a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
            assert sorted(a) == sorted(b), (sorted(a), sorted(b))
            assert all(a[k].tobytes() == b[k].tobytes() for k in a)
            """, [plain, stripped])
    }

    /// Merges recipe `yaml` (over the fixtures) into a safetensors file and runs `check`, numpy
    /// code that sees the fixtures `m1`, `m2`, `m3` and the output `out` (with `gradientPrelude`).
    static func expectSliceMerge(_ yaml: String, check: String, extra: [String] = []) throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        try fuse(["--recipe", try recipe(yaml, in: tmp), "-o", tmp + "/out.safetensors"])
        try TestSupport.pythonOK(gradientPrelude + "m1, m2, m3 = (st_arrays(p) for p in sys.argv[1:4])\nout = st_arrays(sys.argv[4])\n" + check,
                                 [m(1), m(2), m(3), tmp + "/out.safetensors"] + extra)
    }

    @Test("slices with linear merge each slice's sources, gradients evaluated slice by slice")
    func slicesWithLinear() throws {
        try Self.expectSliceMerge("""
            merge_method: linear
            slices:
              - sources:
                  - model: {M1}
                    layer_range: [0, 2]
                  - model: {M2}
                    layer_range: [0, 2]
              - sources:
                  - model: {M1}
                    layer_range: [2, 4]
                  - model: {M3}
                    layer_range: [2, 4]
            parameters:
              weight: [1, 3]
              normalize: false
            """, check: #"""
        assert sorted(out) == sorted(m1)
        for name in out:
            layer = layer_of(name)
            if layer is None: t, other = 0.0, (m2 if "embed" in name else m3)  # the head and final norm: the last slice's
            else: t, other = float(layer % 2), (m2 if layer < 2 else m3)
            w = grad([1, 3], t)
            acc = w * m1[name].astype(np.float64) + w * other[name].astype(np.float64)
            assert out[name].tobytes() == acc.astype(np.float32).tobytes(), name
        """#)
    }

    @Test("slices may list different numbers of models: each slice merges its own, the tensors before the layers the first slice's, after them the last's")
    func slicesWithDifferentSourceCounts() throws {
        try Self.expectSliceMerge("""
            merge_method: linear
            slices:
              - sources:
                  - model: {M1}
                    layer_range: [0, 2]
                    parameters: {weight: 1}
                  - model: {M2}
                    layer_range: [0, 2]
                    parameters: {weight: 3}
              - sources:
                  - model: {M1}
                    layer_range: [2, 4]
                    parameters: {weight: 1}
                  - model: {M2}
                    layer_range: [2, 4]
                    parameters: {weight: 2}
                  - model: {M3}
                    layer_range: [2, 4]
                    parameters: {weight: 5}
            """, check: #"""
        assert sorted(out) == sorted(m1)
        for name in out:
            layer = layer_of(name)
            first = ("embed" in name) if layer is None else layer < 2
            pairs = [(1, m1), (3, m2)] if first else [(1, m1), (2, m2), (5, m3)]
            acc = sum(w * m[name].astype(np.float64) for w, m in pairs) / sum(w for w, _ in pairs)
            got, want = out[name].view(np.int32).astype(np.int64), acc.astype(np.float32).view(np.int32).astype(np.int64)
            assert np.abs(got - want).max() <= 1, name
        """#)
        // A slice of the base alone keeps the base's layers; the others merge their task vectors.
        try Self.expectSliceMerge("""
            merge_method: task_arithmetic
            base_model: {M0}
            slices:
              - sources:
                  - model: {M0}
                    layer_range: [0, 2]
              - sources:
                  - model: {M0}
                    layer_range: [2, 4]
                  - model: {M1}
                    layer_range: [2, 4]
                    parameters: {weight: 0.5}
                  - model: {M3}
                    layer_range: [2, 4]
                    parameters: {weight: 2}
            """, check: #"""
        m0 = st_arrays(sys.argv[5])
        for name in out:
            layer = layer_of(name)
            base = m0[name].astype(np.float64)
            if (layer is None and "embed" in name) or (layer is not None and layer < 2):
                assert out[name].tobytes() == m0[name].tobytes(), name
            else:
                acc = base + 0.5 * (m1[name] - base) + 2 * (m3[name] - base)
                got, want = out[name].view(np.int32).astype(np.int64), acc.astype(np.float32).view(np.int32).astype(np.int64)
                assert np.abs(got - want).max() <= 1, name
        """#, extra: [Self.m(0)])
        // The same for a method that needs a model besides the base (sce), as in mergekit.
        try Self.expectSliceMerge("""
            merge_method: sce
            base_model: {M0}
            slices:
              - sources:
                  - model: {M0}
                    layer_range: [0, 2]
              - sources:
                  - model: {M0}
                    layer_range: [2, 4]
                  - model: {M1}
                    layer_range: [2, 4]
                  - model: {M2}
                    layer_range: [2, 4]
            """, check: #"""
        m0 = st_arrays(sys.argv[5])
        kept = [n for n in out if (layer_of(n) is None and "embed" in n) or (layer_of(n) is not None and layer_of(n) < 2)]
        assert len(kept) > 4 and all(out[n].tobytes() == m0[n].tobytes() for n in kept)
        assert any(out[n].tobytes() != m0[n].tobytes() for n in out if n not in kept)
        """#, extra: [Self.m(0)])
        // An empty slice may list models no other slice has: they add nothing.
        try Self.expectSliceMerge("""
            merge_method: linear
            slices:
              - sources:
                  - {model: {M1}, layer_range: [0, 2], parameters: {weight: 1}}
                  - {model: {M2}, layer_range: [0, 2], parameters: {weight: 1}}
              - sources:
                  - {model: {M1}, layer_range: [2, 2], parameters: {weight: 1}}
                  - {model: {M2}, layer_range: [2, 2], parameters: {weight: 1}}
                  - {model: {M3}, layer_range: [2, 2], parameters: {weight: 1}}
              - sources:
                  - {model: {M1}, layer_range: [2, 4], parameters: {weight: 1}}
                  - {model: {M2}, layer_range: [2, 4], parameters: {weight: 1}}
            """, check: #"""
        for name in out:
            want = ((m1[name].astype(np.float64) + m2[name].astype(np.float64)) / 2).astype(np.float32)
            assert np.abs(out[name].view(np.int32).astype(np.int64) - want.view(np.int32)).max() <= 1, name
        """#)
    }

    @Test("slice and source parameters come before the top-level ones, slice by slice (as mergekit reads them)")
    func sliceAndSourceParameters() throws {
        try Self.expectSliceMerge("""
            merge_method: linear
            slices:
              - sources:
                  - model: {M1}
                    layer_range: [0, 2]
                    parameters:
                      weight: [{filter: mlp, value: [0.5, 2]}]
                  - model: {M2}
                    layer_range: [0, 2]
                    parameters: {weight: 3}
              - sources:
                  - model: {M1}
                    layer_range: [2, 4]
                  - model: {M3}
                    layer_range: [2, 4]
                parameters:
                  weight: [{filter: self_attn, value: 0.25}]
            parameters:
              weight: 1
              normalize: false
            """, check: #"""
        assert sorted(out) == sorted(m1)
        for name in out:
            layer = layer_of(name)
            # which slice holds the tensor: by layer; outside the layers, embeddings the first, the rest the last
            first = layer < 2 if layer is not None else "embed" in name
            t = 0.0 if layer is None else float(layer % 2)
            if first:
                w1 = grad([0.5, 2], t) if "mlp" in name else 1.0  # the source's filter list, else the top level
                w2, other = 3.0, m2
            else:
                w1 = w2 = 0.25 if "self_attn" in name else 1.0  # the slice's, else the top level
                other = m3
            acc = w1 * m1[name].astype(np.float64) + w2 * other[name].astype(np.float64)
            assert out[name].tobytes() == acc.astype(np.float32).tobytes(), name
        """#)
    }

    @Test("mergekit's modules: {default: …} (as its written configurations have it): the module's parameters between the sources' and the top-level ones")
    func defaultModule() throws {
        try Self.expectSliceMerge("""
            merge_method: linear
            modules:
              default:
                parameters:
                  weight: [{filter: self_attn, value: 0.25}]
                slices:
                  - sources:
                      - model: {M1}
                        layer_range: [0, 4]
                        parameters:
                          weight: [{filter: mlp, value: 2}]
                      - model: {M2}
                        layer_range: [0, 4]
            parameters:
              weight: 1
              normalize: false
            """, check: #"""
        assert sorted(out) == sorted(m1)
        for name in out:
            module = 0.25 if "self_attn" in name else 1.0  # the module's filter list, else the top level
            w1 = 2.0 if "mlp" in name else module  # the source's filter list first
            acc = w1 * m1[name].astype(np.float64) + module * m2[name].astype(np.float64)
            assert out[name].tobytes() == acc.astype(np.float32).tobytes(), name
        """#)
    }

    @Test("a per-input parameter's filters match the input's own layer numbers, as in mergekit")
    func sliceFiltersMatchInputNames() throws {
        try Self.expectSliceMerge("""
            merge_method: linear
            slices:
              - sources:
                  - model: {M1}
                    layer_range: [2, 4]
                  - model: {M2}
                    layer_range: [0, 2]
              - sources:
                  - model: {M1}
                    layer_range: [0, 2]
                  - model: {M3}
                    layer_range: [2, 4]
            parameters:
              weight: [{filter: layers.2., value: 3}, {value: 1}]
              normalize: false
            """, check: #"""
        def source(model, layer, name):  # the model's own tensor for output tensor `name`
            return model[re.sub(r"layers\.\d+\.", f"layers.{layer}.", name, count=1)]
        for name in out:
            layer = layer_of(name)
            if layer is None:
                first = "embed" in name
                a, b = m1[name], (m2 if first else m3)[name]
                wa = wb = 1.0
            elif layer < 2:
                a, b = source(m1, layer + 2, name), source(m2, layer, name)
                wa, wb = (3.0 if layer + 2 == 2 else 1.0), 1.0
            else:
                a, b = source(m1, layer - 2, name), source(m3, layer, name)
                wa, wb = 1.0, (3.0 if layer == 2 else 1.0)
            acc = wa * a.astype(np.float64) + wb * b.astype(np.float64)
            assert out[name].tobytes() == acc.astype(np.float32).tobytes(), name
        """#)
    }

    @Test("a slice's own base_model is its base there (mergekit's OutputSliceDefinition.base_model)",
          .enabled(if: MergeRecipeTests.strategies.contains("ties")))
    func sliceBaseModels() throws {
        try Self.expectSliceMerge("""
            merge_method: ties
            base_model: {M1}
            slices:
              - sources:
                  - model: {M1}
                    layer_range: [0, 2]
                  - model: {M2}
                    layer_range: [0, 2]
                  - model: {M3}
                    layer_range: [0, 2]
              - sources:
                  - model: {M1}
                    layer_range: [2, 4]
                  - model: {M2}
                    layer_range: [2, 4]
                    parameters: {weight: 2}
                  - model: {M3}
                    layer_range: [2, 4]
                base_model: {M3}
            parameters:
              weight: 0.5
              density: 0.6
            """, check: #"""
        sys.path.insert(0, sys.argv[5])
        import reference_methods as R
        for name in out:
            layer = layer_of(name)
            first = layer < 2 if layer is not None else "embed" in name
            # slice 0: base m1, inputs m2, m3; slice 1 (and the head and final norm): base m3, inputs m1, m2 (weight 2)
            base, xs, w = (m1, [m2, m3], [0.5, 0.5]) if first else (m3, [m1, m2], [0.5, 2.0])
            per = {"weight": w, "density": [0.6, 0.6]}
            shared = {"normalize": True, "lambda": 1.0, "rescale": False}
            ref, _ = R.METHODS["ties"](name, base[name].astype(np.float64), [x[name].astype(np.float64) for x in xs], per, shared, 0)
            assert np.allclose(out[name].astype(np.float64), ref, rtol=1e-6, atol=1e-7), (name, out[name], ref)
        """#, extra: [TestSupport.fixtures + "/methods"])
    }

    @Test("mergekit's ties example (density and weight gradients, a filter list) matches the numpy reference",
          .enabled(if: MergeRecipeTests.strategies.contains("ties")))
    func tiesExample() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            models:
              - model: {M1}
                parameters:
                  density: [1, 0.7, 0.1] # density gradient
                  weight: 1.0
              - model: {M2}
                parameters:
                  density: 0.5
                  weight: [0, 0.3, 0.7, 1] # weight gradient
              - model: {M3}
                parameters:
                  density: 0.33
                  weight:
                    - filter: mlp
                      value: 0.5
                    - value: 0
            merge_method: ties
            base_model: {M0}
            parameters:
              normalize: true
              int8_mask: true
            dtype: float32
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/out.safetensors"])
        try TestSupport.pythonOK(Self.gradientPrelude + #"""
        sys.path.insert(0, sys.argv[6])
        import reference_methods as R
        base = st_arrays(sys.argv[1]); xs = [st_arrays(p) for p in sys.argv[2:5]]
        out = st_arrays(sys.argv[5])
        D = [[1, 0.7, 0.1], 0.5, 0.33]
        W = [1.0, [0, 0.3, 0.7, 1], [{"filter": "mlp", "value": 0.5}, {"value": 0}]]
        for name in out:
            layer = layer_of(name); t = layer / 3 if layer is not None else 0.0
            per = {"weight": [setting(s, name, t) for s in W], "density": [setting(s, name, t) for s in D]}
            shared = {"normalize": True, "lambda": 1.0, "int8_mask": True, "rescale": False}
            ref, _ = R.METHODS["ties"](name, base[name].astype(np.float64), [x[name].astype(np.float64) for x in xs], per, shared, 0)
            assert np.allclose(out[name].astype(np.float64), ref, rtol=1e-6, atol=1e-7), (name, out[name], ref)
        """#, [Self.m(0), Self.m(1), Self.m(2), Self.m(3), tmp + "/out.safetensors", TestSupport.fixtures + "/methods"])
    }

    @Test("ties without gradients: the recipe gives the bytes of the equivalent flags",
          .enabled(if: MergeRecipeTests.strategies.contains("ties")))
    func tiesFlags() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            merge_method: ties
            base_model: {M0}
            models:
              - model: {M0}
              - model: {M1}
                parameters:
                  weight: 1
                  density: 0.5
              - model: {M2}
                parameters:
                  weight: 0.5
                  density: 0.7
            parameters:
              normalize: true
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/recipe.safetensors"])
        try Self.fuse(["--base", Self.m(0), Self.m(1), Self.m(2), "--strategy", "ties", "--weights", "1,0.5",
                       "--param", "density=0.5,0.7", "--param", "normalize=true", "-o", tmp + "/flags.safetensors"])
        let a = try Self.metadata(tmp + "/recipe.safetensors"), b = try Self.metadata(tmp + "/flags.safetensors")
        #expect(a.filter { $0.key != "wsamerge.recipe" } == b.filter { $0.key != "wsamerge.recipe" })
        let same = try TestSupport.pythonOK("""
            a, b = st_arrays(sys.argv[1]), st_arrays(sys.argv[2])
            print(list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a))
            """, [tmp + "/recipe.safetensors", tmp + "/flags.safetensors"])
        #expect(same.hasPrefix("True"))
    }

    @Test("mergekit's gradient slerp example (self_attn and mlp filters, a fallback) matches the numpy reference",
          .enabled(if: MergeRecipeTests.strategies.contains("slerp")))
    func slerpGradients() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            slices:
              - sources:
                  - model: {M0}
                    layer_range: [0, 4]
                  - model: {M1}
                    layer_range: [0, 4]
            merge_method: slerp
            base_model: {M0}
            parameters:
              t:
                - filter: self_attn
                  value: [0, 0.5, 0.3, 0.7, 1]
                - filter: mlp
                  value: [1, 0.5, 0.7, 0.3, 0]
                - value: 0.5 # fallback for rest of tensors
            dtype: float32
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/out.safetensors"])
        try TestSupport.pythonOK(Self.gradientPrelude + #"""
        sys.path.insert(0, sys.argv[4])
        import reference_methods as R
        a, c = st_arrays(sys.argv[1]), st_arrays(sys.argv[2])
        out = st_arrays(sys.argv[3])
        T = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]
        assert sorted(out) == sorted(a)
        for name in out:
            layer = layer_of(name); t = layer / 3 if layer is not None else 0.0
            ref, _ = R.METHODS["slerp"](name, a[name].astype(np.float64), [c[name].astype(np.float64)], {}, {"t": setting(T, name, t)}, 0)
            assert np.allclose(out[name].astype(np.float64), ref, rtol=1e-6, atol=1e-7), (name, out[name], ref)
        """#, [Self.m(0), Self.m(1), tmp + "/out.safetensors", TestSupport.fixtures + "/methods"])
    }

    // MARK: Model directories and references

    @Test("tokenizer_source: base copies the base directory's config and tokenizer files beside the weights")
    func tokenizerSource() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("""
            merge_method: linear
            base_model: {DIR}/basedir
            models:
              - model: {DIR}/basedir
                parameters: {weight: 1}
              - model: {M1}
                parameters: {weight: 3}
            tokenizer_source: base
            """, in: tmp)
        try Self.fuse(["--recipe", recipe, "-o", tmp + "/out/"])
        #expect(TestSupport.listing(tmp + "/out") == ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "wsamerge_recipe.yml"])
        #expect(TestSupport.read(tmp + "/out/tokenizer.json") == TestSupport.read(Self.dir + "/basedir/tokenizer.json"))
        // A single-file output has nowhere to put them.
        let refused = try TestSupport.wsamerge(["fuse", "--recipe", recipe, "-o", tmp + "/out.safetensors"])
        TestSupport.expectRefusal(refused, code: 64, mentions: [recipe + ":8: tokenizer_source: ", "must be a directory"])
        #expect(!TestSupport.fileExists(tmp + "/out.safetensors"))
    }

    @Test("slices into a directory give a model directory: the first source's files, num_hidden_layers of the output")
    func slicesGiveAModelDirectory() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        func stack(_ ranges: [(String, String)], _ flags: [String] = [], name: String) throws -> String {
            let slices = ranges.map { "  - sources:\n      - model: \($0.0)\n        layer_range: \($0.1)\n" }.joined()
            let recipe = try Self.recipe("merge_method: passthrough\nslices:\n" + slices, in: tmp, name: name + ".yml")
            try Self.fuse(["--recipe", recipe, "-o", tmp + "/" + name + "/"] + flags)
            return tmp + "/" + name
        }
        let source = try String(contentsOfFile: Self.dir + "/basedir/config.json", encoding: .utf8)
        // Deeper: 3 + 3 layers from a model directory and a file.
        let deeper = try stack([("{DIR}/basedir", "[0, 3]"), ("{M2}", "[1, 4]")], name: "deeper")
        #expect(TestSupport.listing(deeper) == ["README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "wsamerge_recipe.yml"])
        #expect(try String(contentsOfFile: deeper + "/config.json", encoding: .utf8)
                == source.replacingOccurrences(of: "\"num_hidden_layers\": 4", with: "\"num_hidden_layers\": 6"))
        #expect(TestSupport.read(deeper + "/tokenizer.json") == TestSupport.read(Self.dir + "/basedir/tokenizer.json"))
        // Shallower: two layers.
        let shallower = try stack([("{DIR}/basedir", "[1, 3]")], name: "shallower")
        #expect(try String(contentsOfFile: shallower + "/config.json", encoding: .utf8).contains("\"num_hidden_layers\": 2,"))
        let layers = try TestSupport.pythonOK("print(sorted({n.split('.')[2] for n in st_arrays(sys.argv[1]) if '.layers.' in n}))", [shallower])
        #expect(layers == "['0', '1']\n")
        // The command line turns the copy off, or takes it from elsewhere.
        let bare = try stack([("{DIR}/basedir", "[0, 3]")], ["--no-copy-files"], name: "bare")
        #expect(TestSupport.listing(bare) == ["model.safetensors", "wsamerge_recipe.yml"])
        let other = tmp + "/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        try #"{"n_layer": 4, "text_config": {"n_layer": 4}}"#.write(toFile: other + "/config.json", atomically: true, encoding: .utf8)
        let redirected = try stack([("{M1}", "[0, 3]")], ["--copy-files-from", other], name: "redirected")
        #expect(try String(contentsOfFile: redirected + "/config.json", encoding: .utf8) == #"{"n_layer": 3, "text_config": {"n_layer": 4}}"#)
    }

    /// `-o` may not name the recipe the merge reads (it replaced the recipe with the weights).
    @Test func outputMayNotBeTheRecipe() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let recipe = dir + "/r.yml", text = "merge_method: linear\nmodels:\n  - model: \(FuseTests.f32[0])\n    parameters: {weight: 1}\n  - model: \(FuseTests.f32[1])\n    parameters: {weight: 1}\n"
        try text.write(toFile: recipe, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.yml", withDestinationPath: recipe)
        for given in [recipe, dir + "/link.yml"] {
            let run = try TestSupport.wsamerge(["fuse", "--recipe", given, "-o", recipe, "--force"])
            TestSupport.expectRefusal(run, code: 73, mentions: ["r.yml"])
            #expect(try String(contentsOfFile: recipe, encoding: .utf8) == text)
        }
    }

    @Test("linear's weight is required: a filter list with no entry for some tensor is refused, a '*' filter matches all")
    func linearWeightFilters() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        func linear(_ firstWeight: String) throws -> String {
            try Self.recipe("merge_method: linear\nmodels:\n  - model: {M1}\n    parameters:\n      weight:\n\(firstWeight)  - model: {M2}\n    parameters: {weight: 0.75}\n", in: tmp)
        }
        let partial = try linear("        - filter: mlp\n          value: 3\n")
        let refused = try TestSupport.wsamerge(["fuse", "--recipe", partial, "-o", tmp + "/out.safetensors"])
        TestSupport.expectRefusal(refused, code: 64, mentions: [partial + ": ", "needs parameter 'weight' for input 1 (\(Self.m(1)))", "tensor '",
                                                                "give every model a weight"])
        #expect(!refused.stderr.contains("--weights"), "a recipe's error names recipe keys, not options: \(refused.stderr)")
        #expect(!TestSupport.fileExists(tmp + "/out.safetensors"))
        try Self.fuse(["--recipe", try linear("        - filter: \"*\"\n          value: 0.25\n"), "-o", tmp + "/star.safetensors"])
        try Self.fuse([Self.m(1), Self.m(2), "--weights", "0.25,0.75", "-o", tmp + "/flags.safetensors"])
        let star = try TestSupport.pythonOK("_, t, _ = st_raw(sys.argv[1]); print(json.dumps({k: v[2].hex() for k, v in t.items()}))", [tmp + "/star.safetensors"])
        let flags = try TestSupport.pythonOK("_, t, _ = st_raw(sys.argv[1]); print(json.dumps({k: v[2].hex() for k, v in t.items()}))", [tmp + "/flags.safetensors"])
        #expect(star == flags)
    }

    @Test("--seed with a recipe is mergekit's --random-seed: the same bytes as the recipe's own seed, and written into the recipe")
    func seedBesideARecipe() throws {
        guard Self.strategies.contains("dare_linear") else { return }
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let body = "merge_method: dare_linear\nbase_model: {M0}\nmodels:\n  - model: {M1}\n    parameters: {weight: 1, density: 0.5}\n  - model: {M2}\n    parameters: {weight: 1, density: 0.5}\n"
        let plain = try Self.recipe(body, in: tmp, name: "plain.yml")
        let seeded = try Self.recipe(body + "parameters:\n  seed: 7\n", in: tmp, name: "seeded.yml")
        try Self.fuse(["--recipe", plain, "--seed", "7", "-o", tmp + "/flag/"])
        try Self.fuse(["--recipe", seeded, "-o", tmp + "/own.safetensors"])
        try Self.fuse(["--recipe", plain, "-o", tmp + "/zero.safetensors"])
        let tensors = "_, t, _ = st_raw(sys.argv[1]); print(json.dumps({k: v[2].hex() for k, v in t.items()}))"
        let flag = try TestSupport.pythonOK(tensors, [tmp + "/flag/model.safetensors"])
        #expect(flag == (try TestSupport.pythonOK(tensors, [tmp + "/own.safetensors"])))
        #expect(flag != (try TestSupport.pythonOK(tensors, [tmp + "/zero.safetensors"])))
        #expect(try String(contentsOfFile: tmp + "/flag/wsamerge_recipe.yml", encoding: .utf8).contains("seed: 7"))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["fuse", "--recipe", seeded, "--seed", "7", "-o", tmp + "/x.safetensors"]),
                                  code: 64, mentions: ["the recipe gives its own seed"])
        let ties = try Self.recipe(body.replacingOccurrences(of: "dare_linear", with: "ties"), in: tmp, name: "ties.yml")
        TestSupport.expectRefusal(try TestSupport.wsamerge(["fuse", "--recipe", ties, "--seed", "7", "-o", tmp + "/x.safetensors"]),
                                  code: 64, mentions: ["ties draws nothing at random"])
        #expect(!TestSupport.fileExists(tmp + "/x.safetensors"))
    }

    @Test("a Hugging Face id resolves to its snapshot in the local cache; one not there is refused")
    func huggingFaceCache() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let repo = tmp + "/hub/models--tiny-org--tiny-model"
        try FileManager.default.createDirectory(atPath: repo + "/snapshots/0123abcd", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: repo + "/refs", withIntermediateDirectories: true)
        try "0123abcd".write(toFile: repo + "/refs/main", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: Self.m(1), toPath: repo + "/snapshots/0123abcd/model.safetensors")
        let recipe = try Self.recipe("""
            merge_method: linear
            models:
              - model: tiny-org/tiny-model
                parameters: {weight: 1}
              - model: {M2}
                parameters: {weight: 1}
              - model: tiny-org/missing-model
                parameters: {weight: 1}
            """, in: tmp)
        let environment = ["HF_HUB_CACHE": tmp + "/hub"]
        let refused = try TestSupport.wsamerge(["fuse", "--recipe", recipe, "-o", tmp + "/out.safetensors"], environment: environment)
        TestSupport.expectRefusal(refused, code: 66, mentions: [recipe + ":7: models[2].model", "tiny-org/missing-model", "reads local files only"])
        let two = try Self.recipe("""
            merge_method: linear
            models:
              - model: tiny-org/tiny-model
                parameters: {weight: 1}
              - model: {M2}
                parameters: {weight: 1}
            """, in: tmp, name: "two.yml")
        let result = try TestSupport.wsamerge(["fuse", "--quiet", "--recipe", two, "-o", tmp + "/out.safetensors"], environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        let meta = try Self.metadata(tmp + "/out.safetensors")
        #expect(meta["wsamerge.inputs"]?.contains("snapshots/0123abcd") == true)
        #expect(meta["wsamerge.recipe"]?.contains("model: tiny-org/tiny-model") == true)
    }

    // MARK: Refusals

    struct Mistake: CustomTestStringConvertible, Sendable {
        let what: String
        let yaml: String
        let line: Int
        let mentions: [String]
        var testDescription: String { what }
    }

    static let mistakes: [Mistake] = [
        Mistake(what: "a word for a number", yaml: """
            merge_method: linear
            models:
              - model: {M1}
                parameters:
                  weight: 1
              - model: {M2}
                parameters:
                  weight: high
            """, line: 8, mentions: ["models[1].parameters.weight: expected a number or a list, got \"high\""]),
        Mistake(what: "an unknown key", yaml: "merge_method: linear\nmodles:\n  - model: {M1}\n", line: 2,
                mentions: ["unknown key 'modles'", "supported: merge_method, base_model, models"]),
        Mistake(what: "an unknown method", yaml: "models:\n  - model: {M1}\nmerge_method: tiess\n", line: 3,
                mentions: ["merge_method: unknown method 'tiess'", "supported: average"]),
        Mistake(what: "an unknown parameter", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters:\n      weight: 1\n      densty: 0.5\n",
                line: 6, mentions: ["models[0].parameters.densty", "has no parameter 'densty'", "weight, normalize"]),
        Mistake(what: "a shared parameter given per model", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters:\n      weight: 1\n      normalize: false\n",
                line: 6, mentions: ["models[0].parameters.normalize", "top-level parameters"]),
        Mistake(what: "broken YAML", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n   - model: {M2}\n", line: 4, mentions: ["not valid YAML"]),
        Mistake(what: "a reversed layer range", yaml: "merge_method: passthrough\nslices:\n  - sources:\n      - model: {M1}\n        layer_range: [3, 1]\n",
                line: 5, mentions: ["slices[0].sources[0].layer_range", "0 ≤ first ≤ end"]),
        Mistake(what: "a layer range past the model", yaml: "merge_method: passthrough\nslices:\n  - sources:\n      - model: {M1}\n        layer_range: [0, 2]\n  - sources:\n      - model: {M2}\n        layer_range: [2, 9]\n",
                line: 8, mentions: ["slices[1].sources[0].layer_range: [2, 9] is not within", "layers 0 to 3"]),
        Mistake(what: "an entry without model", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\n  - parameters: {weight: 1}\n",
                line: 5, mentions: ["models[1]: the entry has no 'model'"]),
        Mistake(what: "an unknown dtype", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\ndtype: float8\n",
                line: 5, mentions: ["dtype: unknown dtype 'float8'", "bfloat16"]),
        Mistake(what: "a tokenizer union", yaml: "merge_method: linear\nbase_model: {M1}\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\ntokenizer_source: union\n",
                line: 6, mentions: ["tokenizer_source: only 'base' (or the base model's reference) is supported"]),
        Mistake(what: "models and slices", yaml: "merge_method: passthrough\nmodels:\n  - model: {M1}\nslices:\n  - sources:\n      - model: {M1}\n        layer_range: [0, 1]\n",
                line: 4, mentions: ["either models or slices"]),
        Mistake(what: "a filter entry without value", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters:\n      weight:\n        - filter: mlp\n        - value: 1\n",
                line: 6, mentions: ["models[0].parameters.weight[0]: the entry has no 'value'"]),
        Mistake(what: "a gradient for a bool", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\nparameters:\n  normalize: [1, 0]\n",
                line: 6, mentions: ["parameters.normalize: expected true or false"]),
        Mistake(what: "a linear model without weight", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\n  - model: {M2}\n",
                line: 5, mentions: ["models[1]: linear needs a weight for every model"]),
        Mistake(what: "a linear slice source without weight",
                yaml: "merge_method: linear\nslices:\n  - sources:\n      - model: {M1}\n        layer_range: [0, 4]\n        parameters: {weight: 1}\n      - model: {M2}\n        layer_range: [0, 4]\n",
                line: 7, mentions: ["slices[0].sources[1]: linear needs a weight for every model", "in the slice's parameters"]),
        Mistake(what: "a duplicate key", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\nmerge_method: linear\n",
                line: 1, mentions: ["duplicate key 'merge_method'"]),
        Mistake(what: "a model listed twice", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\n  - model: {M1}\n    parameters: {weight: 2}\n",
                line: 5, mentions: ["models[1].model: '", "is already models[0]"]),
        Mistake(what: "a model twice in one slice", yaml: "merge_method: linear\nparameters: {weight: 1}\nslices:\n  - sources:\n      - model: {M1}\n        layer_range: [0, 2]\n      - model: {M1}\n        layer_range: [2, 4]\n",
                line: 7, mentions: ["slices[0].sources[1].model: '", "is already sources[0] of this slice"]),
        Mistake(what: "a number as a filter", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters:\n      weight: [{filter: 3, value: 2}, {value: 1}]\n",
                line: 5, mentions: ["models[0].parameters.weight[0].filter: expected a part of tensor names (a string), got 3; quote it"]),
        Mistake(what: "a shared parameter given to a slice source",
                yaml: "merge_method: ties\nbase_model: {M0}\nslices:\n  - sources:\n      - model: {M0}\n        layer_range: [0, 1]\n      - model: {M1}\n        layer_range: [0, 1]\n        parameters: {weight: 1, normalize: true}\n",
                line: 9, mentions: ["slices[0].sources[1].parameters.normalize: 'normalize' is one value for the whole merge, which mergekit 0.1.5 ignores here: remove it to get mergekit's result, or give it under the slice's or the top-level parameters to apply it"]),
        Mistake(what: "a misspelt key in a model entry", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    weigth: 1\n",
                line: 4, mentions: ["models[0].weigth: unknown key 'weigth'", "model, parameters"]),
        Mistake(what: "a method without its base", yaml: "merge_method: wsa\nbase_model: {M0}\nmodels:\n  - model: {M1}\n",
                line: 2, mentions: ["base_model: wsa takes no base model"]),
        Mistake(what: "several documents (mergekit-mega)", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\n---\nmerge_method: linear\n",
                line: 5, mentions: ["not valid YAML: expected a single document in the stream, but found another document", "split it"]),
        Mistake(what: "tokenizer_source without a base", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\ntokenizer_source: base\n",
                line: 5, mentions: ["recipe.yml:5: tokenizer_source: 'base' needs a base_model to copy from"]),
        Mistake(what: "a quoted number", yaml: "merge_method: linear\nmodels:\n  - model: {M1}\n    parameters:\n      weight: \"1\"\n",
                line: 5, mentions: ["expected a number or a list, got \"1\""]),
    ]

    @Test("every mistake in a recipe is refused with its line and key", arguments: mistakes)
    func refusals(_ mistake: Mistake) throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe(mistake.yaml, in: tmp)
        let result = try TestSupport.wsamerge(["fuse", "--recipe", recipe, "-o", tmp + "/out.safetensors"])
        TestSupport.expectRefusal(result, code: 64, mentions: ["\(recipe):\(mistake.line): "] + mistake.mentions)
        #expect(!TestSupport.fileExists(tmp + "/out.safetensors"))
    }

    @Test("a recipe is not mixed with inputs or merge options")
    func recipeAlone() throws {
        let tmp = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(tmp) }
        let recipe = try Self.recipe("merge_method: linear\nmodels:\n  - model: {M1}\n    parameters: {weight: 1}\n", in: tmp)
        let result = try TestSupport.wsamerge(["fuse", "--recipe", recipe, Self.m(2), "--strategy", "wsa", "-o", tmp + "/out.safetensors"])
        TestSupport.expectRefusal(result, code: 64, mentions: ["--recipe", "inputs, --strategy"])
        let missing = try TestSupport.wsamerge(["fuse", "--recipe", tmp + "/nope.yml", "-o", tmp + "/out.safetensors"])
        TestSupport.expectRefusal(missing, code: 66, mentions: ["nope.yml"])
    }
}
