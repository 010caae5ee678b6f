import Foundation
import Testing

/// Fixture paths, the expected statistics `fixtures/generate.py` recorded, and Python helpers
/// shared by the reader/writer/inspect/stats/convert end-to-end tests.
extension TestSupport {
    /// `fixtures/<relative>`.
    static func fixture(_ relative: String) -> String { fixtures + "/" + relative }

    /// `fixtures/expected_stats.json`: `files` → relative path → `{format, metadata, tensors: [...]}`.
    // Parsed once and only read afterwards; JSONSerialization's values are not `Sendable`.
    nonisolated(unsafe) static let expectedStats: [String: [String: Any]] = {
        guard let data = FileManager.default.contents(atPath: fixtures + "/expected_stats.json"),
              let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let files = root["files"] as? [String: [String: Any]] else { return [:] }
        return files
    }()

    /// Every fixture `expected_stats.json` describes, sorted.
    static let statsFixtures: [String] = expectedStats.keys.sorted()

    /// The expected tensors of fixture `relative`, in storage order.
    static func expectedTensors(_ relative: String) -> [[String: Any]] {
        expectedStats[relative]?["tensors"] as? [[String: Any]] ?? []
    }

    static func write(_ bytes: [UInt8], to path: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    static func read(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map { [UInt8]($0) }
    }

    /// Names in `directory` (sorted; empty when it is missing).
    static func listing(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    /// Runs a Python snippet (after `pythonPrelude`) and expects it to exit 0; returns stdout.
    @discardableResult
    static func pythonOK(_ script: String, _ arguments: [String] = [],
                         sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let result = try python(pythonPrelude + script, arguments)
        #expect(result.status == 0, "python failed:\n\(result.stderr)", sourceLocation: sourceLocation)
        return result.stdout
    }

    /// Writes `source` (safetensors) to `target` with every value of tensor `name` NaN.
    static func writeAllNaN(_ name: String, of source: String, to target: String,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        try pythonOK("""
            from safetensors.numpy import load_file, save_file
            t = load_file(sys.argv[1]); t[sys.argv[3]] = np.full_like(t[sys.argv[3]], np.nan); save_file(t, sys.argv[2])
            """, [source, target, name], sourceLocation: sourceLocation)
    }

    /// Helpers every snippet may use: `st_raw(path)` reads a safetensors file, sharded index or
    /// directory without the safetensors package (any dtype): `(metadata, {name: (dtype, shape, bytes)}, [names in storage order])`;
    /// `st_arrays(path)` gives numpy arrays; `NP` maps dtype codes to numpy/ml_dtypes types.
    static let pythonPrelude = #"""
    import json, os, struct, sys
    import numpy as np
    import ml_dtypes
    NP = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
          "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64, "F16": np.float16,
          "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64, "C64": np.complex64,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
          "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz, "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
          "F8_E8M0": ml_dtypes.float8_e8m0fnu}

    def _st_file(path):
        with open(path, "rb") as f:
            blob = f.read()
        n = struct.unpack("<Q", blob[:8])[0]
        header = json.loads(blob[8:8 + n])
        data = blob[8 + n:]
        meta = header.pop("__metadata__", None) or {}
        order = sorted(header, key=lambda k: (header[k]["data_offsets"][0], header[k]["data_offsets"][1], list(header).index(k)))
        tensors = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}
        return meta, tensors, order

    def st_raw(path):
        if os.path.isdir(path):
            idx = [f for f in os.listdir(path) if f.endswith(".safetensors.index.json")]
            path = os.path.join(path, idx[0] if idx else "model.safetensors")
        if not path.endswith(".json"):
            return _st_file(path)
        index = json.load(open(path))
        meta, tensors, order = {}, {}, []
        for shard in sorted(set(index["weight_map"].values())):
            m, t, o = _st_file(os.path.join(os.path.dirname(path), shard))
            meta = meta or m
            tensors.update(t)
            order += o
        return meta, tensors, order

    def st_arrays(path):
        _, tensors, order = st_raw(path)
        return {k: np.frombuffer(tensors[k][2], dtype=NP[tensors[k][0]]).reshape(tensors[k][1]) for k in order}

    def same_values(a, b):
        a = np.asarray(a, dtype=np.float64); b = np.asarray(b, dtype=np.float64)
        return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))

    """#
}

/// |a − b| ≤ rel·|b|; exact when `b` is 0.
func isClose(_ a: Double, _ b: Double, rel: Double) -> Bool {
    a == b || (a - b).magnitude <= rel * b.magnitude
}
