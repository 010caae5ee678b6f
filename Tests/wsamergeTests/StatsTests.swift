import Foundation
import Testing

/// `wsamerge stats` end to end: every fixture against the float64 values generate.py recorded,
/// layer pooling, filters, the table, and independence from `--jobs`.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct StatsTests {
    static let moments = ["mean", "std", "abs_mean", "l2_norm"]
    static let shapeMoments = ["skewness", "excess_kurtosis"]
    static let exact = ["count", "min", "max", "zeros", "nan", "inf"]

    func stats(_ arguments: [String]) throws -> [String: Any] {
        let result = try TestSupport.wsamerge(["stats"] + arguments)
        #expect(result.status == 0, "\(arguments): \(result.stderr)")
        // Only the end-of-run warning summary (skipped dtypes) may appear on stderr.
        #expect(result.stderr.split(separator: "\n").allSatisfy { $0.hasPrefix("wsamerge: warning: ") }, "\(result.stderr)")
        return try result.json() as? [String: Any] ?? [:]
    }

    /// Compares one tensor of the report with its expected entry, field by field.
    func compare(_ got: [String: Any], _ want: [String: Any], _ context: String) {
        #expect(got["name"] as? String == want["name"] as? String, "\(context)")
        #expect(got["dtype"] as? String == want["dtype"] as? String, "\(context)")
        #expect(got["shape"] as? [Int] == want["shape"] as? [Int], "\(context)")
        #expect(got["count"] as? Int == want["count"] as? Int, "\(context)")
        if want["skipped"] != nil {
            #expect((got["skipped"] as? String)?.isEmpty == false, "\(context): should be skipped")
            #expect(got["mean"] == nil, "\(context): a skipped tensor has no statistics")
            return
        }
        #expect(got["skipped"] == nil, "\(context)")
        // Every SPEC field is present, in SPEC order.
        let keys = ["name", "dtype", "shape", "count", "mean", "std", "min", "max", "abs_mean", "l2_norm",
                    "zeros", "nan", "inf", "skewness", "excess_kurtosis"]
        #expect(Set(got.keys) == Set(keys), "\(context): \(got.keys.sorted())")
        for key in Self.exact {
            let g = got[key], w = want[key]
            if w is NSNull {
                #expect(g is NSNull, "\(context) \(key): \(String(describing: g)) should be null")
            } else {
                #expect((g as? NSNumber)?.doubleValue == (w as? NSNumber)?.doubleValue, "\(context) \(key): \(String(describing: g)) != \(String(describing: w))")
            }
        }
        for (keys, rel) in [(Self.moments, 1e-9), (Self.shapeMoments, 1e-6)] {
            for key in keys {
                let g = got[key], w = want[key]
                if w is NSNull {
                    #expect(g is NSNull, "\(context) \(key): \(String(describing: g)) should be null")
                } else if let g = (g as? NSNumber)?.doubleValue, let w = (w as? NSNumber)?.doubleValue {
                    // Relative to the value, except where it is (nearly) zero by cancellation: a mean
                    // is as accurate as Σ|x|/n allows, skewness and kurtosis are unitless (floor 1e-3).
                    let scale = switch key {
                    case "mean": max(abs(w), (want["abs_mean"] as? Double) ?? 0)
                    case "skewness", "excess_kurtosis": max(abs(w), 1e-3)
                    default: abs(w)
                    }
                    #expect(abs(g - w) <= rel * scale, "\(context) \(key): \(g) vs \(w) (relative \(abs(g - w) / abs(w)))")
                } else {
                    Issue.record("\(context) \(key): \(String(describing: g)) vs \(String(describing: w))")
                }
            }
        }
    }

    @Test(arguments: TestSupport.statsFixtures)
    func matchesNumpyOnEveryFixture(relative: String) throws {
        let report = try stats([TestSupport.fixture(relative)])
        let expected = try #require(TestSupport.expectedStats[relative])
        #expect(report["file"] as? String == TestSupport.fixture(relative))
        #expect(report["format"] as? String == expected["format"] as? String)
        #expect(NSDictionary(dictionary: report["metadata"] as? [String: Any] ?? ["missing": true])
                .isEqual(to: expected["metadata"] as? [String: Any] ?? [:]))
        #expect(report["tensor_count"] as? Int == expected["tensor_count"] as? Int)
        #expect(report["parameter_count"] as? Int == expected["parameter_count"] as? Int)
        let got = report["tensors"] as? [[String: Any]] ?? []
        let want = TestSupport.expectedTensors(relative)
        #expect(got.map { $0["name"] as? String ?? "?" } == want.map { $0["name"] as? String ?? "" }, "storage order")
        for (g, w) in zip(got, want) { compare(g, w, "\(relative) '\(w["name"] ?? "")'") }
    }

    @Test func reportKeysFollowSpecOrder() throws {
        let result = try TestSupport.wsamerge(["stats", TestSupport.fixture("basic.safetensors")])
        let text = result.stdout
        let order = ["\"file\"", "\"format\"", "\"metadata\"", "\"tensor_count\"", "\"parameter_count\"", "\"tensors\"",
                     "\"name\"", "\"dtype\"", "\"shape\"", "\"count\"", "\"mean\"", "\"std\"", "\"min\"", "\"max\"",
                     "\"abs_mean\"", "\"l2_norm\"", "\"zeros\"", "\"nan\"", "\"inf\"", "\"skewness\"", "\"excess_kurtosis\""]
        let positions = order.map { text.range(of: $0)?.lowerBound }
        #expect(positions.allSatisfy { $0 != nil })
        #expect(zip(positions, positions.dropFirst()).allSatisfy { $0! < $1! }, "\(text.prefix(400))")
        #expect(text.hasSuffix("}\n") && text.split(separator: "\n").count == 1)
    }

    @Test func shardedByDirectoryOrIndexIsTheSame() throws {
        let byIndex = try TestSupport.wsamerge(["stats", TestSupport.fixture("sharded/model.safetensors.index.json")])
        let byDirectory = try TestSupport.wsamerge(["stats", TestSupport.fixture("sharded")])
        let a = try #require(try byIndex.json() as? [String: Any]), b = try #require(try byDirectory.json() as? [String: Any])
        #expect(NSArray(array: a["tensors"] as? [Any] ?? []).isEqual(to: b["tensors"] as? [Any] ?? [1]))
        #expect(b["format"] as? String == "safetensors-sharded")
        // The index's total_size is bookkeeping, not metadata.
        #expect((b["metadata"] as? [String: String]) == ["format": "pt"])
    }

    @Test func severalInputsGiveOneLineEach() throws {
        let inputs = ["basic.safetensors", "npy/c_order.npy", "savez.npz"].map(TestSupport.fixture)
        let result = try TestSupport.wsamerge(["stats"] + inputs)
        #expect(result.status == 0)
        let lines = try result.jsonLines().map { $0 as? [String: Any] ?? [:] }
        #expect(lines.map { $0["file"] as? String ?? "" } == inputs)
        #expect(lines.map { $0["format"] as? String ?? "" } == ["safetensors", "npy", "npz"])
    }

    @Test func groupByLayerPoolsTheScopes() throws {
        let report = try stats(["--group-by", "layer", TestSupport.fixture("basic.safetensors")])
        let layers = try #require(report["layers"] as? [[String: Any]])
        #expect(layers.map { $0["layer"] as? Int } == [0, 1])
        let expected = TestSupport.expectedTensors("basic.safetensors")
        for group in layers {
            let layer = group["layer"] as? Int ?? -1
            let members = expected.filter { ($0["name"] as? String ?? "").contains("layers.\(layer).") }
            #expect(group["tensor_count"] as? Int == members.count)
            let n = members.map { Double($0["count"] as! Int) }
            let total = n.reduce(0, +)
            let mean = zip(members, n).map { ($0["mean"] as! Double) * $1 }.reduce(0, +) / total
            // Pooled population variance: Σ nᵢ(σᵢ² + μᵢ²) / N − μ².
            let variance = zip(members, n).map { m, k in
                let s = m["std"] as! Double, u = m["mean"] as! Double
                return k * (s * s + u * u)
            }.reduce(0, +) / total - mean * mean
            #expect(group["count"] as? Int == Int(total))
            #expect(isClose(group["mean"] as? Double ?? .nan, mean, rel: 1e-9), "layer \(layer) mean")
            #expect(isClose(group["std"] as? Double ?? .nan, variance.squareRoot(), rel: 1e-9), "layer \(layer) std")
            #expect(group["min"] as? Double == members.map { $0["min"] as! Double }.min())
            #expect(group["max"] as? Double == members.map { $0["max"] as! Double }.max())
            #expect(group["nan"] as? Int == 0 && group["inf"] as? Int == 0)
        }
        // Without the option there is no "layers" member.
        #expect(try stats([TestSupport.fixture("basic.safetensors")])["layers"] == nil)
    }

    @Test func includeAndExcludeSelectTensors() throws {
        let path = TestSupport.fixture("basic.safetensors")
        let names = { (report: [String: Any]) in (report["tensors"] as? [[String: Any]] ?? []).map { $0["name"] as? String ?? "" } }
        let mlp = try stats(["--include", "mlp", path])
        #expect(names(mlp) == ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"])
        #expect(mlp["tensor_count"] as? Int == 2 && mlp["parameter_count"] as? Int == 256)
        let both = try stats(["--include", "^lm_", "--include", "layers\\.1\\.", "--exclude", "norm", path])
        #expect(names(both) == ["lm_head.bias", "model.layers.1.mlp.up_proj.weight"])
        let none = try stats(["--include", "nothing-matches", path])
        #expect(names(none).isEmpty && none["tensor_count"] as? Int == 0)
        let allButWeights = try stats(["--exclude", "weight$", path])
        #expect(names(allButWeights) == ["lm_head.bias"])
    }

    @Test func tableHasAlignedColumns() throws {
        let result = try TestSupport.wsamerge(["stats", "--format", "table", TestSupport.fixture("hard.safetensors")])
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        #expect(lines.first?.hasPrefix(TestSupport.fixture("hard.safetensors")) == true)
        let rows = Array(lines.dropFirst())
        let expected = TestSupport.expectedTensors("hard.safetensors")
        #expect(rows.count == expected.count + 1)
        #expect(rows[0].split(separator: " ").map(String.init) == ["name", "dtype", "shape", "count", "mean", "std", "min", "max", "abs_mean",
                                                                    "l2_norm", "zeros", "nan", "inf", "skewness", "excess_kurtosis"])
        // Right-aligned numbers: every row ends at the same column; every column starts at the
        // same offset as its header (text columns) or ends where its header ends (numbers).
        #expect(Set(rows.map(\.count)).count == 1, "\(rows)")
        let header = rows[0]
        let dtypeStart = header.range(of: "dtype")!.lowerBound.utf16Offset(in: header)
        let meanEnd = header.range(of: "mean")!.upperBound.utf16Offset(in: header)
        for (row, tensor) in zip(rows.dropFirst(), expected) {
            let chars = Array(row)
            #expect(row.hasPrefix(tensor["name"] as! String + " "))
            #expect(String(chars[dtypeStart...]).hasPrefix(tensor["dtype"] as! String), "\(row)")
            #expect(chars[dtypeStart - 1] == " " && chars[meanEnd - 1] != " ", "\(row)")
        }
        #expect(rows.contains { $0.hasPrefix("all_nan ") && $0.hasSuffix(" -") }, "no finite value prints '-'")
        // The non-finite counts are columns too: all_nan's 7 NaN show, where the moments are '-'.
        let allNaN = rows.first { $0.hasPrefix("all_nan ") }?.split(separator: " ").map(String.init) ?? []
        #expect(allNaN.count == 15 && allNaN[3] == "7" && allNaN[11] == "7" && allNaN[12] == "0", "\(allNaN)")
        #expect(result.stdout.allSatisfy { $0 != "{" })
    }

    /// The layers table has every field of the JSON's layers, the non-finite counts included.
    @Test func layerTableHasTheJSONFields() throws {
        let path = TestSupport.fixture("merge/a.safetensors")
        let table = try TestSupport.wsamerge(["stats", "--group-by", "layer", "--format", "table", path])
        let json = try TestSupport.wsamerge(["stats", "--group-by", "layer", path])
        let layers = (try json.json() as? [String: Any])?["layers"] as? [[String: Any]] ?? []
        let header = table.stdout.split(separator: "\n").first { $0.hasPrefix("layer ") }?.split(separator: " ").map(String.init)
        #expect(header == ["layer", "tensors", "count", "mean", "std", "min", "max", "nan", "inf"], "\(table.stdout)")
        #expect(!layers.isEmpty && Set(layers[0].keys) == ["layer", "tensor_count", "count", "mean", "std", "min", "max", "nan", "inf"])
    }

    @Test func resultsDoNotDependOnJobs() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let path = dir + "/big.safetensors"
        // 300,000 BF16 + 70,000 F32 elements: several chunks and many blocks.
        try TestSupport.pythonOK("""
        from safetensors.numpy import save_file
        rng = np.random.default_rng(11)
        save_file({"a": (rng.standard_normal((600, 500)) * 0.02).astype(ml_dtypes.bfloat16),
                   "b": (rng.standard_normal(70000) + 5).astype(np.float32)}, sys.argv[1])
        """, [path])
        let one = try TestSupport.wsamerge(["stats", "--jobs", "1", path])
        #expect(one.status == 0)
        for jobs in ["2", "3", "7"] {
            #expect(try TestSupport.wsamerge(["stats", "--jobs", jobs, path]).stdout == one.stdout, "--jobs \(jobs)")
        }
        #expect(try TestSupport.wsamerge(["stats", path]).stdout == one.stdout)
        // And the values are numpy's.
        let report = try #require(try one.json() as? [String: Any])
        let check = try TestSupport.pythonOK("""
        got = json.loads(sys.argv[2])
        for t in got["tensors"]:
            x = st_arrays(sys.argv[1])[t["name"]].astype(np.float64)
            for key, want in (("mean", x.mean()), ("std", x.std()), ("min", x.min()), ("max", x.max())):
                assert abs(t[key] - want) <= 1e-9 * abs(want), (t["name"], key, t[key], want)
        print("ok")
        """, [path, String(decoding: try JSONSerialization.data(withJSONObject: report), as: UTF8.self)])
        #expect(check == "ok\n")
    }

    @Test func statsOfAnEmptyCheckpoint() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let json = Array("{}      ".utf8)
        try TestSupport.write(withUnsafeBytes(of: UInt64(json.count).littleEndian, Array.init) + json, to: dir + "/empty.safetensors")
        let report = try stats([dir + "/empty.safetensors"])
        #expect(report["tensor_count"] as? Int == 0 && (report["tensors"] as? [Any])?.isEmpty == true)
    }
}
