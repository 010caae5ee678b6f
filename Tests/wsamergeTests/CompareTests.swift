import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing

/// End-to-end tests of `compare` and `--plot`: every quantity against the numpy float64
/// reference `fixtures/reference_compare.py` (one Python run for all the cases), the same bytes
/// for every `--jobs`, and SVG files that parse and never change stdout.
@Suite(.serialized) struct CompareTests {
    static let merge = ["a.safetensors", "b.safetensors", "c.npz"].map { TestSupport.fixture("merge/" + $0) }
    static let methods = TestSupport.fixture("methods/")

    /// Variants written by one Python run into `dir`: zero-norm, non-finite and NaN-payload
    /// tensors, a base with exact opposite task vectors, many ties and a tensor over one chunk.
    static func variants(in dir: String) throws {
        try TestSupport.pythonOK(#"""
            from safetensors.numpy import load_file, save_file
            d, merge = sys.argv[1], sys.argv[2]
            a = load_file(merge + "/a.safetensors"); b = load_file(merge + "/b.safetensors")
            z = dict(a); z["model.layers.0.attn.weight"] = np.zeros_like(a["model.layers.0.attn.weight"])
            save_file(z, d + "/zero_a.safetensors")
            n1 = {k: v.copy() for k, v in a.items()}
            e = n1["model.embed.weight"]; e[0, 0] = np.nan; e[1, 1] = np.inf; e[2, 2] = -np.inf
            bits = n1["model.layers.1.attn.weight"].reshape(-1).view(np.uint32)
            bits[0] = 0x7F800001; bits[1] = 0x7FC00000; bits[2] = 0x7FC00000
            n2 = {k: v.copy() for k, v in n1.items()}
            bits = n2["model.layers.1.attn.weight"].reshape(-1).view(np.uint32)
            bits[0] = 0x7FC00001; bits[2] = 0xFFC00000
            n2["model.embed.weight"][3, 3] = np.nan
            save_file(n1, d + "/nan_a.safetensors"); save_file(n2, d + "/nan_b.safetensors")
            rng = np.random.default_rng(7)
            N = 600_017
            base = {"model.layers.0.big.weight": rng.integers(-64, 64, N) / 64,
                    "model.layers.1.attn.weight": rng.integers(-64, 64, (24, 16)) / 64,
                    "model.zero.weight": np.zeros(40), "lm_head.weight": rng.integers(-64, 64, (8, 4)) / 64}
            def delta(seed):
                r = np.random.default_rng(seed)
                return {k: r.integers(-4, 5, v.shape) / 16 for k, v in base.items()}
            d0, d1 = delta(1), delta(2)
            f32 = lambda m: {k: np.asarray(v, np.float32) for k, v in m.items()}
            save_file(f32(base), d + "/tb.safetensors")
            save_file(f32({k: base[k] + d0[k] for k in base}), d + "/t0.safetensors")
            save_file(f32({k: base[k] - d0[k] for k in base}), d + "/tneg.safetensors")
            save_file(f32({k: base[k] + d1[k] for k in base}), d + "/t1.safetensors")
            """#, [dir, TestSupport.fixture("merge")])
    }

    /// The (arguments, output) of every case checked against the reference.
    static func cases(_ dir: String) -> [(label: String, arguments: [String])] {
        let m = Self.merge, f = methods, t = { dir + "/" + $0 + ".safetensors" }
        return [
            ("merge", m),
            ("merge-filtered", ["--include", "layers", "--exclude", "norm"] + m),
            ("bf16", [m[0], TestSupport.fixture("merge/a_bf16.safetensors"), TestSupport.fixture("merge/b_bf16.safetensors")]),
            ("identical", [m[0], m[0]]),
            ("zero-norm", [t("zero_a"), m[1], t("zero_a")]),
            ("nonfinite", [t("nan_a"), t("nan_b"), m[0]]),
            ("methods", ["--base", f + "base.safetensors", f + "ft0.safetensors", f + "ft1.safetensors", f + "ft2.safetensors"]),
            ("methods-0.5", ["--base", f + "base_bf16.safetensors", "--density", "0.5", f + "ft0_bf16.safetensors", f + "ft1.safetensors"]),
            ("methods-1", ["--base", f + "base.safetensors", "--density", "1", f + "ft0.safetensors", f + "ft2.safetensors"]),
            ("opposite", ["--base", t("tb"), t("t0"), t("tneg")]),
            ("ties", ["--base", t("tb"), "--density", "0.3", t("t0"), t("t1"), t("tneg")]),
            ("no-task-vector", ["--base", t("tb"), t("tb"), t("t0")]),
            ("one-input", ["--base", t("tb"), t("t1")]),
            ("nonfinite-base", ["--base", t("nan_a"), t("nan_b"), m[1]]),
            ("big", [t("t0"), t("t1"), t("tb")]),
        ]
    }

    @Test func everyQuantityMatchesNumpy() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try Self.variants(in: dir)
        var entries: [[String: Any]] = []
        var documents: [String: [String: Any]] = [:]
        for (label, arguments) in Self.cases(dir) {
            let run = try TestSupport.wsamerge(["compare", "--group-by", "layer"] + arguments)
            #expect(run.status == 0, "\(label): \(run.stderr)")
            let output = dir + "/\(label).json"
            try run.stdout.write(toFile: output, atomically: true, encoding: .utf8)
            entries.append(["args": arguments, "output": output])
            documents[label] = try run.json() as? [String: Any]
        }
        let casesFile = dir + "/cases.json"
        try JSONSerialization.data(withJSONObject: entries).write(to: URL(fileURLWithPath: casesFile))
        let check = try TestSupport.pythonFile(TestSupport.fixture("reference_compare.py"), ["check", casesFile])
        #expect(check.status == 0, "numpy reference disagrees:\n\(check.stdout)\(check.stderr)")

        // What the cases are there for, spelled out.
        func tensor(_ label: String, _ name: String) -> [String: Any] {
            ((documents[label]?["tensors"] as? [[String: Any]]) ?? []).first { $0["name"] as? String == name } ?? [:]
        }
        func pairs(_ t: [String: Any]) -> [[String: Any]] { t["pairs"] as? [[String: Any]] ?? [] }
        for t in documents["identical"]?["tensors"] as? [[String: Any]] ?? [] {
            let p = pairs(t)[0]
            #expect(p["changed"] as? Int == 0 && p["rel_l2"] as? Double == 0 && p["max_abs_diff"] as? Double == 0)
            #expect(abs((p["cosine"] as? Double ?? 0) - 1) < 1e-12)
        }
        let zero = pairs(tensor("zero-norm", "model.layers.0.attn.weight"))
        #expect(zero[0]["cosine"] is NSNull && zero[0]["rel_l2"] is NSNull && zero[1]["cosine"] is NSNull)
        #expect(zero[1]["changed"] as? Int == 0)
        let payload = pairs(tensor("nonfinite", "model.layers.1.attn.weight"))
        #expect(payload[0]["changed"] as? Int == 2)
        #expect(tensor("nonfinite", "model.embed.weight")["nonfinite"] as? Int == 4)
        for t in documents["opposite"]?["tensors"] as? [[String: Any]] ?? [] where t["name"] as? String != "model.zero.weight" {
            let p = pairs(t)[0]
            #expect(abs((p["cosine"] as? Double ?? 0) + 1) < 1e-12 && p["overlap_top"] as? Double == 1, "\(t["name"] ?? "")")
        }
        let zeroBase = tensor("opposite", "model.zero.weight")
        #expect((zeroBase["task_vectors"] as? [[String: Any]])?.allSatisfy { $0["rel_norm"] is NSNull } == true)
        let none = tensor("no-task-vector", "lm_head.weight")
        #expect((none["task_vectors"] as? [[String: Any]])?.first?["norm"] as? Double == 0)
        #expect(pairs(none)[0]["cosine"] is NSNull && pairs(none)[0]["overlap_top"] as? Double == 0)
        #expect(documents["methods"]?["density"] as? Double == 0.2)
        #expect(documents["merge"]?["reference"] as? String == Self.merge[0])
    }

    @Test func outputIsTheSameForEveryJobs() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try Self.variants(in: dir)
        for arguments in [["--base", dir + "/tb.safetensors", "--density", "0.3", dir + "/t0.safetensors", dir + "/t1.safetensors"],
                          [dir + "/t0.safetensors", dir + "/t1.safetensors", dir + "/tneg.safetensors"], Self.merge] {
            let one = try TestSupport.wsamerge(["compare", "--group-by", "layer", "--jobs", "1"] + arguments)
            #expect(one.status == 0, "\(one.stderr)")
            for jobs in ["2", "5"] {
                let run = try TestSupport.wsamerge(["compare", "--group-by", "layer", "--jobs", jobs] + arguments)
                #expect(run.stdout == one.stdout, "--jobs \(jobs)")
            }
        }
    }

    @Test func sortTableAndUsageErrors() throws {
        let sorted = try TestSupport.wsamerge(["compare", "--sort", "cosine"] + Self.merge)
        let cosines = ((try sorted.json() as? [String: Any])?["tensors"] as? [[String: Any]] ?? []).map { t in
            (t["pairs"] as? [[String: Any]] ?? []).compactMap { $0["cosine"] as? Double }.min() ?? 2
        }
        #expect(cosines.count == 5 && cosines == cosines.sorted())
        let table = try TestSupport.wsamerge(["compare", "--format", "table", "--group-by", "layer"] + Self.merge)
        #expect(table.status == 0 && table.stdout.contains("rel_l2 2") && table.stdout.contains("(reference)"))
        let base = try TestSupport.wsamerge(["compare", "--format", "table", "--base", Self.methods + "base.safetensors",
                                             Self.methods + "ft0.safetensors", Self.methods + "ft1.safetensors"])
        #expect(base.status == 0 && base.stdout.contains("sign conflict") && base.stdout.contains("overlap 1-2"))
        TestSupport.expectRefusal(try TestSupport.wsamerge(["compare", Self.merge[0]]), code: 64, mentions: ["two"])
        TestSupport.expectRefusal(try TestSupport.wsamerge(["compare", "--density", "0.5"] + Self.merge), code: 64, mentions: ["--base"])
        TestSupport.expectRefusal(try TestSupport.wsamerge(["compare", "--base", Self.merge[0], "--density", "0", Self.merge[1]]),
                                  code: 64, mentions: ["--density"])
        TestSupport.expectRefusal(try TestSupport.wsamerge(["compare", "--sort", "sign_conflict"] + Self.merge), code: 64, mentions: ["--base"])
    }

    @Test func shapeMismatchAndMissingTensors() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let lacking = dir + "/b.safetensors"
        #expect(try TestSupport.wsamerge(["convert", Self.merge[1], "-o", lacking, "--exclude", "embed"]).status == 0)
        let run = try TestSupport.wsamerge(["compare", Self.merge[0], lacking])
        let missing = ((try run.json() as? [String: Any])?["missing"] as? [[String: Any]])?.first
        #expect(missing?["name"] as? String == "model.embed.weight" && missing?["missing_from"] as? [String] == [lacking])
        let shaped = dir + "/s.safetensors"
        try TestSupport.pythonOK("""
            from safetensors.numpy import load_file, save_file
            t = load_file(sys.argv[1]); t["model.embed.weight"] = t["model.embed.weight"].reshape(32, 16); save_file(t, sys.argv[2])
            """, [Self.merge[1], shaped])
        // A tensor whose shape differs is listed under skipped, as in scope, and the others compared.
        for arguments in [[Self.merge[0], shaped], [Self.merge[1], "--base", shaped, Self.merge[0]]] {
            let compared = try TestSupport.wsamerge(["compare"] + arguments)
            #expect(compared.status == 0, "\(compared.stderr)")
            let json = try compared.json() as? [String: Any]
            let skipped = (json?["skipped"] as? [[String: Any]])?.first
            #expect(skipped?["name"] as? String == "model.embed.weight", "\(String(describing: json?["skipped"]))")
            let reason = skipped?["reason"] as? String ?? ""
            #expect(reason.hasPrefix("shape ") && reason.contains("[32, 16] in \(shaped)") && reason.contains("differs from"), "\(reason)")
            let names = (json?["tensors"] as? [[String: Any]])?.compactMap { $0["name"] as? String } ?? []
            #expect(!names.isEmpty && !names.contains("model.embed.weight"))
        }
    }

    /// An element that is not finite in some input is left out of everything: of the sums, and of
    /// every input's top set (overlap_top); sums of squares that overflow give null, not a cosine
    /// of −1.
    @Test func nonFiniteAndOverflowingElements() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try TestSupport.pythonOK("""
            from safetensors.numpy import save_file
            d = sys.argv[1]
            save_file({"w": np.zeros(5, np.float32)}, d + "/base.safetensors")
            save_file({"w": np.array([5, 1, 0, 0, 0], np.float32)}, d + "/a.safetensors")
            save_file({"w": np.array([np.inf, 1, 0, 0, 0], np.float32)}, d + "/b.safetensors")
            save_file({"p": np.array([1e200, 1e200])}, d + "/h0.safetensors")
            save_file({"p": np.array([1e200, 1e200])}, d + "/h1.safetensors")
            """, [dir])
        let run = try TestSupport.wsamerge(["compare", "--base", dir + "/base.safetensors", dir + "/a.safetensors", dir + "/b.safetensors"])
        let tensor = ((try run.json() as? [String: Any])?["tensors"] as? [[String: Any]])?.first
        let pair = (tensor?["pairs"] as? [[String: Any]])?.first
        #expect(tensor?["nonfinite"] as? Int == 1 && pair?["cosine"] as? Double == 1, "\(run.stdout)")
        #expect(pair?["overlap_top"] as? Double == 1, "the top-1 of both is element 1 once element 0 is left out: \(run.stdout)")
        let huge = try TestSupport.wsamerge(["compare", dir + "/h0.safetensors", dir + "/h1.safetensors"])
        let hugePair = (((try huge.json() as? [String: Any])?["tensors"] as? [[String: Any]])?.first?["pairs"] as? [[String: Any]])?.first
        #expect(hugePair?["cosine"] is NSNull && hugePair?["changed"] as? Int == 0, "\(huge.stdout)")
    }

    /// `--strip-prefix` applies to the inputs and to `--base`: a copy whose names carry a prefix
    /// pairs with the original, tensor by tensor, as if it had none.
    @Test func stripPrefixPairsPrefixedNames() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let prefixed = dir + "/p.safetensors"
        try TestSupport.pythonOK("""
            from safetensors.numpy import load_file, save_file
            save_file({"module." + k: v for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])
            """, [Self.merge[1], prefixed])
        for arguments in [[Self.merge[0], prefixed], [Self.merge[0], "--base", prefixed]] {
            let plain = try TestSupport.wsamerge(["compare"] + arguments.map { $0 == prefixed ? Self.merge[1] : $0 })
            let stripped = try TestSupport.wsamerge(["compare", "--strip-prefix", "module."] + arguments)
            let json = try stripped.json() as? [String: Any]
            #expect(stripped.status == 0 && json?["missing"] == nil, "\(arguments): \(stripped.stderr)")
            #expect((json?["tensors"] as? [Any])?.count == ((try plain.json() as? [String: Any])?["tensors"] as? [Any])?.count)
        }
    }

    /// A tensor with no finite element has no task-vector norm: null, as stats gives null for
    /// statistics over no finite values (not 0).
    @Test func noFiniteElementsGiveNullNorms() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let nan = dir + "/nan.safetensors"
        try TestSupport.writeAllNaN("model.embed.weight", of: Self.merge[1], to: nan)
        let run = try TestSupport.wsamerge(["compare", "--base", Self.merge[0], nan, Self.merge[2]])
        let tensors = try #require((try run.json() as? [String: Any])?["tensors"] as? [[String: Any]])
        let row = try #require(tensors.first { $0["name"] as? String == "model.embed.weight" })
        let vectors = try #require(row["task_vectors"] as? [[String: Any]])
        #expect(vectors.allSatisfy { $0["norm"] is NSNull && $0["rel_norm"] is NSNull }, "\(row)")
    }

    // MARK: - Plots

    /// Element names and `class` attributes of an SVG document, and the point count of every path.
    static func svgSummary(_ path: String) throws -> (elements: [(name: String, attributes: [String: String])], text: String) {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        final class Delegate: NSObject, XMLParserDelegate {
            var elements: [(name: String, attributes: [String: String])] = []
            func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                        attributes: [String: String] = [:]) { elements.append((name, attributes)) }
        }
        let parser = XMLParser(data: Data(text.utf8))
        let delegate = Delegate()
        parser.delegate = delegate
        #expect(parser.parse(), "\(path) is not XML: \(String(describing: parser.parserError))")
        return (delegate.elements, text)
    }

    static func points(_ d: String) -> Int { d.split(whereSeparator: { $0 == "M" || $0 == "L" }).count }

    @Test func plotsNeverChangeStdout() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let base = ["--base", Self.methods + "base.safetensors", Self.methods + "ft0.safetensors", Self.methods + "ft1.safetensors"]
        for command in [["scope"] + Self.merge, ["scope", "--format", "table"] + Self.merge, ["compare"] + Self.merge, ["compare"] + base] {
            let plain = try TestSupport.wsamerge(command)
            let plot = dir + "/p.svg"
            TestSupport.remove(plot)
            let drawn = try TestSupport.wsamerge(command + ["--plot", plot])
            #expect(drawn.status == 0 && drawn.stdout == plain.stdout && drawn.stderr.isEmpty, "\(command): \(drawn.stderr)")
            let svg = try Self.svgSummary(plot)
            #expect(!svg.text.contains("<script") && !svg.text.contains("href") && !svg.text.contains("url("))
            let paths = svg.elements.filter { $0.name == "path" }
            let panels = svg.elements.filter { $0.name == "g" && $0.attributes["class"] == "panel" }
            let models = command[0] == "scope" ? 3 : 2
            let linePanels = panels.count - 1 // the last one holds the tensors outside the layers
            #expect(paths.filter { $0.attributes["class"] == "series" }.count == models * linePanels, "\(command)")
            #expect(paths.filter { $0.attributes["class"] == "target" }.count == (command[0] == "scope" ? linePanels : 0))
        }
        // scope of the merge fixtures: attn has layers 0 and 1 (two points per line), the others one.
        let again = try TestSupport.wsamerge(["scope", "--plot", dir + "/s.svg"] + Self.merge)
        #expect(again.status == 0)
        let s = try Self.svgSummary(dir + "/s.svg")
        let counts = s.elements.filter { $0.name == "path" }.map { Self.points($0.attributes["d"] ?? "") }
        #expect(counts == [2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1])
    }

    @Test func plotIsWrittenLikeEveryOutput() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let plot = dir + "/p.svg"
        #expect(try TestSupport.wsamerge(["compare", "--plot", plot] + Self.merge).status == 0)
        TestSupport.expectRefusal(try TestSupport.wsamerge(["compare", "--plot", plot] + Self.merge), code: 73, mentions: [plot, "--force"])
        #expect(try TestSupport.wsamerge(["compare", "--force", "--plot", plot] + Self.merge).status == 0)
        TestSupport.expectRefusal(try TestSupport.wsamerge(["scope", "--plot", Self.merge[1]] + Self.merge), code: 73, mentions: ["input"])
        TestSupport.expectRefusal(try TestSupport.wsamerge(["compare", "--plot", dir + "/none/p.svg"] + Self.merge), code: 73)
        #expect(TestSupport.listing(dir) == ["p.svg"])
    }
}
