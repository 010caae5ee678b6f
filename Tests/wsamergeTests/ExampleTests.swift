import Foundation
import Testing

/// End-to-end run of `examples/wsa-federated/run.py --quick`: numpy clients trained from one
/// initialisation, scoped and merged by the binary under test, a second round with and without
/// the WSA regulariser, and the accuracy table. The quick run takes about a second.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct ExampleTests {
    static let script = TestSupport.root + "/examples/wsa-federated/run.py"

    static let accuracyRows = [
        "client 0 (round 1)", "client 1 (round 1)", "client 2 (round 1)", "client 3 (round 1)",
        "round-1 average", "round-1 wsa",
        "round-2 average, no regulariser", "round-2 wsa, no regulariser",
        "round-2 average, WSA regulariser", "round-2 wsa, WSA regulariser",
    ]
    static let scopeRows = ["round 1", "round 2, no regulariser", "round 2, WSA regulariser"]

    /// The cells of the Markdown-style table rows (`| a | b |`) printed after `heading`.
    static func table(after heading: String, in output: String) -> [[String]] {
        guard let start = output.range(of: heading) else { return [] }
        var rows: [[String]] = []
        for line in output[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false).dropFirst() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard trimmed.hasPrefix("|") else {
                if rows.isEmpty { continue } else { break }
            }
            let cells = trimmed.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            if cells.allSatisfy({ $0.allSatisfy { $0 == "-" } }) { continue }  // the separator row
            rows.append(cells)
        }
        return Array(rows.dropFirst())  // the header row
    }

    @Test func quickRunPrintsTheAccuracyAndScopeTables() throws {
        guard FileManager.default.isExecutableFile(atPath: TestSupport.python) else {
            Issue.record("no Python environment at \(TestSupport.python): run the suite with `make test`")
            return
        }
        let out = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(out) }
        let result = try TestSupport.run(TestSupport.python,
                                         [Self.script, "--quick", "--wsamerge", TestSupport.binary, "--out", out])
        #expect(result.status == 0, "exit \(result.status)\nstdout:\n\(result.stdout)\nstderr:\n\(result.stderr)")
        #expect(result.stdout.contains("max relative error"), "the regulariser gradient check ran: \(result.stdout)")

        let accuracy = Self.table(after: "test accuracy", in: result.stdout)
        #expect(accuracy.map { $0[0] } == Self.accuracyRows, "accuracy table:\n\(result.stdout)")
        for row in accuracy {
            // model, one column per seed (two in --quick), mean, std
            #expect(row.count == 5, "row \(row)")
            for cell in row.dropFirst() {
                let value = Double(cell)
                #expect(value != nil && value! >= 0 && value! <= 1, "accuracy cell '\(cell)' in \(row)")
            }
        }

        let scopes = Self.table(after: "weight scopes", in: result.stdout)
        #expect(scopes.map { $0[0] } == Self.scopeRows, "scope table:\n\(result.stdout)")
        for row in scopes {
            #expect(row.count == 4 && row.dropFirst().allSatisfy { Double($0).map { $0 >= 0 } ?? false }, "row \(row)")
        }

        // The files the workflow leaves behind with --out, per seed.
        for seed in ["seed0", "seed1"] {
            for file in ["client0.npz", "client3.npz", "target.json", "avg.npz", "wsa.npz",
                         "round2_plain_avg.npz", "round2_wsa_avg.npz", "round2_wsa_wsa.npz"] {
                #expect(TestSupport.fileExists("\(out)/\(seed)/\(file)"), "\(seed)/\(file) missing")
            }
        }
        let target = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/seed0/target.json")))
        let names = ((target as? [String: Any])?["tensors"] as? [[String: Any]])?.compactMap { $0["name"] as? String }
        #expect(names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                          "layers.2.weight", "layers.2.bias"], "target.json tensors: \(String(describing: names))")
    }
}
