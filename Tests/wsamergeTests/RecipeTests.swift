import Foundation
import Testing

/// The jq recipes of README.md, run exactly as the README prints them.
///
/// Every recipe is a fenced `sh` block whose first line is `# recipe: <id>`. The test reads the
/// README, takes each block, replaces the placeholder file names (`model.safetensors`,
/// `a.safetensors`, `b.safetensors`, `c.npz`) by fixtures, runs it with `/bin/sh` (cwd
/// `fixtures/merge`, where `a.safetensors`, `b.safetensors` and `c.npz` exist as named) with the
/// binary under test first on `PATH` as `wsamerge`, and checks the output against values computed
/// independently in numpy. Editing a recipe in the README changes what is tested; adding or
/// removing one fails `readmeListsTheTestedRecipes` until this file follows.
@Suite(.enabled(if: TestSupport.hasCommand("jq") && TestSupport.hasPython, "needs jq and the test venv: run make test"))
struct RecipeTests {
    static let ids: Set<String> = ["std-above", "std-ratio-top10", "params-per-dtype", "non-finite", "moved-from-a"]

    // MARK: - The recipes

    @Test func readmeListsTheTestedRecipes() throws {
        let recipes = try Self.recipes()
        #expect(Set(recipes.keys) == Self.ids, "README recipes: \(recipes.keys.sorted())")
        for (id, script) in recipes {
            #expect(script.hasPrefix("wsamerge "), "recipe \(id) should start with `wsamerge`: \(script)")
            #expect(script.contains("| jq "), "recipe \(id) should pipe into jq: \(script)")
        }
    }

    @Test func stdAboveThreshold() throws {
        guard let run = try Self.run("std-above", ["model.safetensors": TestSupport.fixtures + "/basic.safetensors"]) else { return }
        #expect(run.stdout.split(separator: "\n") == ["lm_head.bias", "model.layers.0.input_layernorm.weight",
                                                      "model.layers.1.input_layernorm.weight"])
        for model in ["/basic.safetensors", "/merge/a.safetensors", "/hard.safetensors"].map({ TestSupport.fixtures + $0 }) {
            guard let run = try Self.run("std-above", ["model.safetensors": model]) else { return }
            Self.check(run, """
                out, model = sys.argv[1:]
                expected = []
                for name, x in load(model).items():
                    f = x[np.isfinite(x)]
                    if f.size and f.std() > 0.05:
                        expected.append(name)
                got = open(out).read().splitlines()
                assert got == expected, (got, expected)
                """, [model])
        }
    }

    @Test func tenLargestStdRatios() throws {
        let merge = TestSupport.fixtures + "/merge"
        guard let run = try Self.run("std-ratio-top10", [:]) else { return }
        #expect(run.stdout.split(separator: "\n").count == 5, "the fixtures hold 5 float tensors: \(run.stdout)")
        Self.check(run, Self.stdRatioCheck, [merge + "/a.safetensors", merge + "/b.safetensors"])

        // More than ten tensors: only the ten most divergent are listed, most divergent first.
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let made = try TestSupport.python("""
            import sys, numpy as np
            from safetensors.numpy import save_file
            rng = np.random.default_rng(7)
            factors = rng.permutation(np.linspace(1.05, 2.25, 13))
            a = {f"layers.{i}.weight": rng.normal(0, 0.02, (8, 16)).astype(np.float32) for i in range(13)}
            b = {k: (v * factors[i] + 0.001).astype(np.float32) for i, (k, v) in enumerate(a.items())}
            save_file(a, sys.argv[1] + "/a.safetensors"); save_file(b, sys.argv[1] + "/b.safetensors")
            """, [dir])
        try #require(made.status == 0, "\(made.stderr)")
        let models = [dir + "/a.safetensors", dir + "/b.safetensors"]
        guard let many = try Self.run("std-ratio-top10", ["a.safetensors": models[0], "b.safetensors": models[1]]) else { return }
        #expect(many.stdout.split(separator: "\n").count == 10, "\(many.stdout)")
        Self.check(many, Self.stdRatioCheck, models)
    }

    static let stdRatioCheck = """
        out, *models = sys.argv[1:]
        ms = [floats(p) for p in models]
        rows = []
        for name in ms[0]:
            if all(name in m for m in ms):
                s = [m[name].std() for m in ms]
                rows.append((max(s) / min(s), name))
        rows.sort(key=lambda r: -r[0])
        got = [line.split("\\t") for line in open(out).read().splitlines()]
        assert [g[1] for g in got] == [r[1] for r in rows[:10]], (got, rows)
        for g, r in zip(got, rows):
            close(float(g[0]), r[0])
        """

    @Test func parameterCountPerDType() throws {
        guard let run = try Self.run("params-per-dtype", ["model.safetensors": TestSupport.fixtures + "/basic.safetensors"]) else { return }
        let counts = try run.json() as? [String: Int]
        #expect(counts == ["F32": 144, "BF16": 256, "F16": 16], "\(run.stdout)")
        for model in ["/basic.safetensors", "/dtypes.safetensors", "/sharded"].map({ TestSupport.fixtures + $0 }) {
            guard let run = try Self.run("params-per-dtype", ["model.safetensors": model]) else { return }
            Self.check(run, """
                out, model = sys.argv[1:]
                files = [model]
                if os.path.isdir(model):
                    index = json.load(open(model + "/model.safetensors.index.json"))
                    files = [model + "/" + f for f in sorted(set(index["weight_map"].values()))]
                expected = {}
                for path in files:
                    for name, t in header(path):
                        expected[t["dtype"]] = expected.get(t["dtype"], 0) + int(np.prod(t["shape"], dtype=np.int64))
                got = json.load(open(out))
                assert got == expected, (got, expected)
                """, [model])
        }
    }

    @Test func tensorsWithNaNOrInf() throws {
        guard let run = try Self.run("non-finite", ["model.safetensors": TestSupport.fixtures + "/hard.safetensors"]) else { return }
        #expect(run.stdout.split(separator: "\n") == ["all_inf\tnan=0\tinf=3", "all_nan\tnan=7\tinf=0",
                                                      "nan_inf_mixed\tnan=3\tinf=3", "one_finite\tnan=1\tinf=1"])
        guard let clean = try Self.run("non-finite", ["model.safetensors": TestSupport.fixtures + "/basic.safetensors"]) else { return }
        #expect(clean.stdout.isEmpty, "\(clean.stdout)")
        for model in ["/hard.safetensors", "/dtypes.safetensors", "/merge/a.safetensors"].map({ TestSupport.fixtures + $0 }) {
            guard let run = try Self.run("non-finite", ["model.safetensors": model]) else { return }
            Self.check(run, """
                out, model = sys.argv[1:]
                expected = []
                for name, x in load(model).items():
                    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
                    if nan or inf:
                        expected.append(f"{name}\\tnan={nan}\\tinf={inf}")
                got = open(out).read().splitlines()
                assert got == expected, (got, expected)
                """, [model])
        }
    }

    @Test func scopeMovedFromFirstModel() throws {
        let merge = TestSupport.fixtures + "/merge"
        guard let run = try Self.run("moved-from-a", [:]) else { return }
        #expect(run.stdout.split(separator: "\n").count == 5, "\(run.stdout)")
        Self.check(run, """
            out, *models = sys.argv[1:]
            ms = [floats(p) for p in models]
            rows = []
            for name in ms[0]:
                if all(name in m for m in ms):
                    mu = [m[name].mean() for m in ms]
                    sd = [m[name].std() for m in ms]
                    mf, sf = sum(mu) / len(ms), sum(sd) / len(ms)   # linear fusion, uniform weights
                    rows.append((abs(mf - mu[0]), sf / sd[0], name))
            rows.sort(key=lambda r: -r[0])
            got = [line.split("\\t") for line in open(out).read().splitlines()]
            assert [g[2] for g in got] == [r[2] for r in rows[:10]], (got, rows)
            for g, r in zip(got, rows):
                close(float(g[0]), r[0], 1e-7)
                close(float(g[1]), r[1])
            """, [merge + "/a.safetensors", merge + "/b.safetensors", merge + "/c.npz"])
    }

    /// An all-zero tensor in model A (std 0) used to stop the recipe with a division by zero.
    @Test func scopeMovedFromFirstModelWithAnAllZeroTensor() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let names = ["a.safetensors", "b.safetensors", "c.npz"]
        try TestSupport.pythonOK("""
            from safetensors.numpy import save_file
            r = np.random.default_rng(0)
            for i, p in enumerate(sys.argv[1:3]):
                save_file({"pooler.dense.bias": np.zeros(8, np.float32), "w": r.standard_normal(16).astype(np.float32)}, p)
            np.savez(sys.argv[3], **{"pooler.dense.bias": np.full(8, 0.5, np.float32), "w": r.standard_normal(16).astype(np.float32)})
            """, names.map { dir + "/" + $0 })
        guard let run = try Self.run("moved-from-a", Dictionary(uniqueKeysWithValues: names.map { ($0, dir + "/" + $0) })) else { return }
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("\tnull\tpooler.dense.bias"), "\(run.stdout)")
    }

    // MARK: - Reading and running the README

    /// `id → script` for every ```` ```sh ```` block of README.md that starts with `# recipe: <id>`.
    static func recipes() throws -> [String: String] {
        let text = try String(contentsOfFile: TestSupport.root + "/README.md", encoding: .utf8)
        var recipes: [String: String] = [:]
        var lines = text.components(separatedBy: "\n")[...]
        while let line = lines.popFirst() {
            guard line.trimmingCharacters(in: .whitespaces) == "```sh",
                  let first = lines.first, first.hasPrefix("# recipe: ") else { continue }
            lines.removeFirst()
            let id = first.dropFirst("# recipe: ".count).trimmingCharacters(in: .whitespaces)
            var body: [String] = []
            while let next = lines.popFirst(), next.trimmingCharacters(in: .whitespaces) != "```" { body.append(next) }
            recipes[id] = body.joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return recipes
    }

    /// Whether jq is on PATH; records an issue saying how to get it when it is not.
    static func jqAvailable(sourceLocation: SourceLocation = #_sourceLocation) throws -> Bool {
        let probe = try TestSupport.run("/bin/sh", ["-c", "command -v jq"])
        if probe.status != 0 {
            Issue.record("jq is not installed, so the README recipes cannot run: run the suite with `make test`, which installs jq",
                         sourceLocation: sourceLocation)
            return false
        }
        return true
    }

    /// Runs README recipe `id` with its placeholder file names replaced (`placeholders`: README name →
    /// path; unmapped names resolve in `fixtures/merge`). `nil` when jq is missing (an issue is recorded).
    static func run(_ id: String, _ placeholders: [String: String],
                    sourceLocation: SourceLocation = #_sourceLocation) throws -> TestSupport.Result? {
        guard try jqAvailable(sourceLocation: sourceLocation) else { return nil }
        let recipe = try #require(try recipes()[id], "README.md has no `# recipe: \(id)` block", sourceLocation: sourceLocation)
        var script = recipe
        for (name, path) in placeholders {
            let pattern = "(?<![\\w./-])" + NSRegularExpression.escapedPattern(for: name) + "(?![\\w.-])"
            let regex = try NSRegularExpression(pattern: pattern)
            script = regex.stringByReplacingMatches(in: script, range: NSRange(script.startIndex..., in: script),
                                                    withTemplate: NSRegularExpression.escapedTemplate(for: quoted(path)))
        }
        // `wsamerge` on PATH is the binary under test.
        let bin = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(bin) }
        try FileManager.default.createSymbolicLink(atPath: bin + "/wsamerge", withDestinationPath: TestSupport.binary)
        let path = bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let command = "cd \(quoted(TestSupport.fixtures + "/merge")) || exit 1\n" + script
        let result = try TestSupport.run("/bin/sh", ["-c", command], environment: ["PATH": path])
        // The pipeline's stderr may hold wsamerge's warning summary (skipped dtypes), nothing else.
        let clean = result.stderr.split(separator: "\n").allSatisfy { $0.hasPrefix("wsamerge: warning: ") }
        #expect(result.status == 0 && clean,
                "recipe \(id) failed (exit \(result.status)):\n\(command)\nstderr: \(result.stderr)", sourceLocation: sourceLocation)
        return result
    }

    static func quoted(_ path: String) -> String { "'" + path.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// Numpy helpers every check shares: `load` decodes a checkpoint to float64 arrays in storage
    /// order (safetensors via its header, so BF16 and 8-bit floats decode with ml_dtypes),
    /// `floats` keeps the float tensors, `header` lists safetensors entries by offset.
    static let prelude = """
        import sys, os, json, struct
        import numpy as np, ml_dtypes
        DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                  "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
                  "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz, "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
                  "F8_E8M0": ml_dtypes.float8_e8m0fnu,
                  "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                  "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
        def header(path):
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                h = json.loads(f.read(n))
            h.pop("__metadata__", None)
            return sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0])
        def load(path, only_floats=False):
            if path.endswith(".npz"):
                z = np.load(path)
                return {k: z[k].astype(np.float64) for k in z.files if not only_floats or z[k].dtype.kind == "f"}
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                f.seek(8 + n)
                data = f.read()
            out = {}
            for name, t in header(path):
                if t["dtype"] not in DTYPES or (only_floats and not t["dtype"].startswith(("F", "BF"))):
                    continue
                a, b = t["data_offsets"]
                out[name] = np.frombuffer(data[a:b], dtype=DTYPES[t["dtype"]]).astype(np.float64).reshape(t["shape"])
            return out
        def floats(path):
            return load(path, only_floats=True)
        def close(a, b, rel=1e-9):
            assert abs(a - b) <= rel * abs(b) + 1e-15, (a, b)

        """

    /// Runs `script` (after `prelude`) with `sys.argv[1]` = a file holding the recipe's stdout.
    static func check(_ run: TestSupport.Result, _ script: String, _ arguments: [String],
                      sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let dir = try TestSupport.temporaryDirectory()
            defer { TestSupport.remove(dir) }
            try run.stdout.write(toFile: dir + "/out.txt", atomically: true, encoding: .utf8)
            let result = try TestSupport.python(prelude + script, [dir + "/out.txt"] + arguments)
            #expect(result.status == 0, "numpy check failed for \(arguments):\n\(result.stderr)\nrecipe output:\n\(run.stdout)",
                    sourceLocation: sourceLocation)
        } catch {
            Issue.record(error, sourceLocation: sourceLocation)
        }
    }
}
