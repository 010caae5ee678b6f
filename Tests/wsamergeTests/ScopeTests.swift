import Foundation
import Testing

/// End-to-end tests of `scope`, checked against numpy float64.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct ScopeTests {
    static let models = FuseTests.f32

    @Test(arguments: ["linear", "quadratic", "mixture"])
    func fusionRulesMatchNumpy(_ fusion: String) throws {
        let run = try TestSupport.wsamerge(["scope", "--scope-fusion", fusion, "--weights", "1,2,1"] + Self.models)
        #expect(run.status == 0, "\(run.stderr)")
        let check = try TestSupport.python("""
            import sys, json, numpy as np
            from safetensors.numpy import load_file
            doc = json.loads(sys.stdin.read()) if False else json.loads(open(sys.argv[1]).read())
            fusion = sys.argv[2]; paths = sys.argv[3:]
            ms = [load_file(p) if p.endswith(".safetensors") else dict(np.load(p)) for p in paths]
            w = np.array([1, 2, 1]) / 4
            assert doc["fusion"] == fusion and doc["weights"] == list(w) and doc["models"] == paths
            names = [k for k in ms[0] if ms[0][k].dtype.kind == "f"]
            assert [t["name"] for t in doc["tensors"]] == names, [t["name"] for t in doc["tensors"]]
            def close(a, b, rel): assert abs(a - b) <= rel * abs(b) + 1e-300, (a, b)
            for t in doc["tensors"]:
                xs = [m[t["name"]].astype(np.float64) for m in ms]
                mu = np.array([x.mean() for x in xs]); sd = np.array([x.std() for x in xs])
                for s, m_, d in zip(t["scopes"], mu, sd): close(s["mean"], m_, 1e-9); close(s["std"], d, 1e-9)
                mf = (w * mu).sum()
                sf = {"linear": (w * sd).sum(), "quadratic": np.sqrt((w * sd**2).sum()),
                      "mixture": np.sqrt((w * (sd**2 + mu**2)).sum() - mf**2)}[fusion]
                close(t["fused"]["mean"], mf, 1e-9); close(t["fused"]["std"], sf, 1e-9)
                close(t["std_ratio"], sd.max() / sd.min(), 1e-9)
                kl = max(np.log(sf / d) + (d**2 + (m_ - mf)**2) / (2 * sf**2) - 0.5 for m_, d in zip(mu, sd))
                close(t["kl"], kl, 1e-6)
            """, [try write(run.stdout), fusion] + Self.models)
        #expect(check.status == 0, "\(check.stderr)")
    }

    /// Tensors are measured side by side: the report is the same for every `--jobs`, with
    /// safetensors and .npz models (which are measured one tensor at a time).
    @Test(arguments: [models, FuseTests.bf16])
    func reportIsTheSameForEveryJobs(models: [String]) throws {
        let one = try TestSupport.wsamerge(["scope", "--jobs", "1"] + models)
        #expect(one.status == 0, "\(one.stderr)")
        for jobs in ["2", "4", "7"] {
            let run = try TestSupport.wsamerge(["scope", "--jobs", jobs] + models)
            #expect(run.status == 0 && run.stdout == one.stdout, "--jobs \(jobs)")
        }
    }

    func write(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "scope-\(UUID().uuidString).json"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func sortByDivergenceAndWriteTarget() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let run = try TestSupport.wsamerge(["scope", "--sort", "std_ratio", "-o", dir + "/t.json"] + Self.models)
        #expect(run.status == 0, "\(run.stderr)")
        let doc = try #require(try run.json() as? [String: Any])
        let ratios = (doc["tensors"] as? [[String: Any]] ?? []).compactMap { $0["std_ratio"] as? Double }
        #expect(ratios.count == 5 && ratios == ratios.sorted(by: >))
        let written = try String(contentsOfFile: dir + "/t.json", encoding: .utf8)
        #expect(written == run.stdout)
        let again = try TestSupport.wsamerge(["scope", "-o", dir + "/t.json"] + Self.models)
        TestSupport.expectRefusal(again, code: 73, mentions: ["--force"])
    }

    /// `--plot` and `-o` naming one file however spelled (`./`, an absolute path) is refused
    /// before anything is written: it replaced the target scope with the plot.
    @Test func plotAndTargetMayNotBeOneFile() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        for plot in [dir + "/./same.json", dir + "/../" + (dir as NSString).lastPathComponent + "/same.json"] {
            let run = try TestSupport.wsamerge(["scope"] + Self.models + ["-o", dir + "/same.json", "--plot", plot, "--force"])
            TestSupport.expectRefusal(run, code: 64, mentions: ["--plot and -o name the same file"])
            #expect(!TestSupport.fileExists(dir + "/same.json"))
        }
    }

    @Test func missingTensorsAreReported() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let lacking = dir + "/b.safetensors"
        #expect(try TestSupport.wsamerge(["convert", Self.models[1], "-o", lacking, "--exclude", "embed"]).status == 0)
        let run = try TestSupport.wsamerge(["scope", Self.models[0], lacking])
        let doc = try #require(try run.json() as? [String: Any])
        let missing = try #require(doc["missing"] as? [[String: Any]])
        #expect(missing.first?["name"] as? String == "model.embed.weight")
        #expect(missing.first?["missing_from"] as? [String] == [lacking])
    }

    /// A tensor with no finite values in one model has no scope there: its std ratio, fused
    /// scope and divergence are null under every fusion rule, not numbers.
    @Test func undefinedScopesGiveNulls() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let nan = dir + "/nan.safetensors"
        try TestSupport.writeAllNaN("model.embed.weight", of: Self.models[1], to: nan)
        for fusion in ["linear", "quadratic", "mixture"] {
            let run = try TestSupport.wsamerge(["scope", "--scope-fusion", fusion, Self.models[0], nan])
            let tensors = try #require((try run.json() as? [String: Any])?["tensors"] as? [[String: Any]])
            let row = try #require(tensors.first { $0["name"] as? String == "model.embed.weight" })
            let fused = row["fused"] as? [String: Any]
            #expect(row["std_ratio"] is NSNull && row["kl"] is NSNull, "\(fusion): \(row)")
            #expect(fused?["mean"] is NSNull && fused?["std"] is NSNull, "\(fusion): \(row)")
        }
    }

    @Test func tensorsOfAnotherKindAreReportedNotDropped() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let changed = dir + "/bint.safetensors"
        let make = try TestSupport.python("""
            import sys, numpy as np
            from safetensors.numpy import load_file, save_file
            t = load_file(sys.argv[1]); t["model.embed.weight"] = np.zeros((16, 32), np.int32); save_file(t, sys.argv[2])
            """, [Self.models[1], changed])
        #expect(make.status == 0, "\(make.stderr)")
        let run = try TestSupport.wsamerge(["scope", Self.models[0], changed])
        let doc = try #require(try run.json() as? [String: Any])
        let skipped = try #require(doc["skipped"] as? [[String: Any]])
        #expect(skipped.first?["name"] as? String == "model.embed.weight")
        #expect((skipped.first?["reason"] as? String)?.contains("I32") == true)
        #expect((doc["tensors"] as? [[String: Any]])?.count == 4)
    }

    @Test func tableIsForPeople() throws {
        let run = try TestSupport.wsamerge(["scope", "--format", "table"] + Self.models)
        #expect(run.status == 0)
        let lines = run.stdout.split(separator: "\n")
        #expect(lines.first?.contains("fused std") == true)
        #expect(lines.count == 6)
    }
}
