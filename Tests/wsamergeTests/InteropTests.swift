import Foundation
import Testing

/// wsamerge and the Python ecosystem read each other's files: `safetensors.safe_open`,
/// `safetensors.deserialize` and `numpy.load(allow_pickle=False)` on wsamerge's output, and
/// wsamerge on what numpy and safetensors write (including shapes the fixtures do not have).
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct InteropTests {
    func convert(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = try TestSupport.wsamerge(["convert"] + arguments)
        #expect(result.status == 0, "\(arguments): \(result.stderr)", sourceLocation: sourceLocation)
    }

    @Test func safetensorsReadsWhatWsamergeWrites() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let inputs = ["basic.safetensors", "dtypes.safetensors", "hard.safetensors", "subbyte.safetensors"]
        for name in inputs { try convert([TestSupport.fixture(name), "-o", dir + "/" + name]) }
        let out = try TestSupport.pythonOK("""
        from safetensors import safe_open, deserialize
        numpy_ok = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F64", "C64"}
        checked = 0
        for name in sys.argv[3:]:
            src_meta, src, order = st_raw(os.path.join(sys.argv[1], name))
            path = os.path.join(sys.argv[2], name)
            # The reference parser accepts the file and finds every tensor's exact bytes.
            parsed = dict(deserialize(open(path, "rb").read()))
            assert list(parsed) == order or sorted(parsed) == sorted(order), (list(parsed), order)
            for k in order:
                assert parsed[k]["shape"] == src[k][1] and bytes(parsed[k]["data"]) == src[k][2], (name, k)
            if name == "subbyte.safetensors":
                continue
            with safe_open(path, framework="np") as f:
                assert f.metadata() == src_meta, (f.metadata(), src_meta)
                assert sorted(f.keys()) == sorted(order)
                for k in order:
                    if src[k][0] not in numpy_ok:
                        continue
                    t = f.get_tensor(k)
                    assert list(t.shape) == src[k][1] and np.ascontiguousarray(t).tobytes() == src[k][2], (name, k)
                    checked += 1
        print(checked)
        """, [TestSupport.fixtures, dir] + inputs)
        #expect(out == "33\n")  // 6 basic + 16 numpy-typed dtypes.safetensors tensors + 11 hard
    }

    @Test func numpyLoadsWhatWsamergeWrites() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try convert([TestSupport.fixture("hard.safetensors"), "-o", dir + "/hard.npz"])
        try convert([TestSupport.fixture("hard.safetensors"), "--compress", "-o", dir + "/hard_c.npz"])
        try convert([TestSupport.fixture("savez.npz"), "--compress", "-o", dir + "/savez.npz"])
        try convert([TestSupport.fixture("dtypes.safetensors"), "--include", "^(u8|i16|u32|i64|f16|f32|f64|bool|scalar|empty|c64)$",
                     "-o", dir + "/dtypes.npz"])
        try convert([TestSupport.fixture("npy/fortran.npy"), "-o", dir + "/fortran.npy"])
        let out = try TestSupport.pythonOK("""
        import zipfile
        def arrays(path):
            if path.endswith(".npy"):
                return {"fortran": np.load(path, allow_pickle=False)}
            assert zipfile.ZipFile(path).testzip() is None, path  # every CRC-32 is right
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        fx = sys.argv[1]
        cases = [("hard.npz", st_arrays(os.path.join(fx, "hard.safetensors"))),
                 ("hard_c.npz", st_arrays(os.path.join(fx, "hard.safetensors"))),
                 ("savez.npz", arrays(os.path.join(fx, "savez.npz"))),
                 ("dtypes.npz", {k: v for k, v in st_arrays(os.path.join(fx, "dtypes.safetensors")).items()
                                 if k in ("u8", "i16", "u32", "i64", "f16", "f32", "f64", "bool", "scalar", "empty", "c64")}),
                 ("fortran.npy", {"fortran": np.load(os.path.join(fx, "npy", "fortran.npy"))})]
        n = 0
        for name, want in cases:
            got = arrays(os.path.join(sys.argv[2], name))
            assert list(got) == list(want), (name, list(got), list(want))
            for k in want:
                assert got[k].dtype == want[k].dtype.newbyteorder("="), (name, k, got[k].dtype, want[k].dtype)
                assert got[k].shape == want[k].shape, (name, k)
                assert got[k].tobytes() == np.asarray(want[k], order="C").astype(want[k].dtype.newbyteorder("=")).tobytes(), (name, k)
                assert got[k].flags.c_contiguous, (name, k)  # written in C order
                n += 1
        print(n)
        """, [TestSupport.fixtures, dir])
        #expect(out == "40\n")  // 11 + 11 hard, 6 savez, 11 dtypes, 1 fortran
    }

    @Test func wsamergeReadsWhatPythonWrites() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        // Shapes and names the fixtures do not cover: unicode names and metadata, a long tensor
        // (several 4096-element blocks and 262,144-element chunks), a large compressed member,
        // a 0-d array in an archive, Fortran order with 4 dimensions, big-endian bool/u2.
        try TestSupport.pythonOK("""
        from safetensors.numpy import save_file
        rng = np.random.default_rng(21)
        d = sys.argv[1]
        st = {"naïve/ünïcode.weight \\"q\\"": rng.standard_normal((3, 5)).astype(np.float32),
              "long": rng.standard_normal(600_001).astype(np.float32),
              "e5m2": rng.standard_normal(1000).astype(ml_dtypes.float8_e5m2),
              "z": np.zeros((2, 0, 3), dtype=np.float16)}
        save_file(st, os.path.join(d, "py.safetensors"), metadata={"note": "héllo \\"x\\" \\\\ \\n end", "format": "pt"})
        np.savez_compressed(os.path.join(d, "py.npz"), **{"deep/er/name": rng.standard_normal(700_000).astype(np.float32),
                                                          "zero_d": np.float64(2.5), "ü": np.arange(7, dtype=">u2")})
        np.save(os.path.join(d, "f4d.npy"), np.asfortranarray(rng.standard_normal((3, 4, 5, 2))).astype(">f8"))
        np.save(os.path.join(d, "flags.npy"), rng.random((4, 4)) < 0.5)
        """, [dir])
        for name in ["py.safetensors", "py.npz", "f4d.npy", "flags.npy"] {
            try convert([dir + "/" + name, "-o", dir + "/" + name + ".out.safetensors"])
        }
        let report = try TestSupport.wsamerge(["stats", dir + "/py.safetensors", dir + "/py.npz", dir + "/f4d.npy"])
        #expect(report.status == 0, "\(report.stderr)")
        let out = try TestSupport.pythonOK("""
        d = sys.argv[1]
        def source(name):
            p = os.path.join(d, name)
            if name.endswith(".npy"):
                return {name[:-4]: np.load(p)}, {}
            if name.endswith(".npz"):
                with np.load(p) as z:
                    return {k: z[k] for k in z.files}, {}
            meta, _, _ = st_raw(p)
            return st_arrays(p), meta
        n = 0
        for name in ["py.safetensors", "py.npz", "f4d.npy", "flags.npy"]:
            want, want_meta = source(name)
            meta, _, order = st_raw(os.path.join(d, name + ".out.safetensors"))
            got = st_arrays(os.path.join(d, name + ".out.safetensors"))
            assert meta == want_meta, (meta, want_meta)
            assert order == list(want) or name == "py.safetensors", (order, list(want))
            assert sorted(order) == sorted(want)
            for k in want:
                w = np.asarray(want[k], order="C")
                assert got[k].shape == w.shape and got[k].tobytes() == w.astype(w.dtype.newbyteorder("<")).tobytes(), (name, k)
                n += 1
        # stats agree with numpy on the long tensors
        docs = [json.loads(line) for line in sys.argv[2].splitlines()]
        for doc in docs:
            src, _ = source(os.path.basename(doc["file"]))
            for t in doc["tensors"]:
                x = np.asarray(src[t["name"]]).astype(np.float64)
                if x.size == 0:
                    assert t["mean"] is None
                    continue
                assert abs(t["mean"] - x.mean()) <= 1e-9 * max(abs(x.mean()), np.abs(x).mean()), (t["name"], t["mean"], x.mean())
                assert abs(t["std"] - x.std()) <= 1e-9 * x.std() or x.std() == t["std"] == 0, (t["name"], t["std"], x.std())
                assert t["min"] == x.min() and t["max"] == x.max()
        print(n)
        """, [dir, report.stdout])
        #expect(out == "9\n")
        let inspect = try TestSupport.wsamerge(["inspect", dir + "/py.safetensors"]).json() as? [String: Any]
        #expect(inspect?["metadata"] as? [String: String] == ["note": "héllo \"x\" \\ \n end", "format": "pt"])
        let names = (inspect?["tensors"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names.contains("naïve/ünïcode.weight \"q\""))
    }

    @Test func shardedOutputLoadsShardByShard() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try convert([TestSupport.fixture("hard.safetensors"), "--max-shard-size", "50kB", "-o", dir + "/out"])
        let out = try TestSupport.pythonOK("""
        from safetensors.numpy import load_file
        index = json.load(open(os.path.join(sys.argv[2], "model.safetensors.index.json")))
        ref = st_arrays(sys.argv[1])
        seen = {}
        for shard in sorted(set(index["weight_map"].values())):
            seen.update(load_file(os.path.join(sys.argv[2], shard)))
        assert sorted(seen) == sorted(ref)
        for k in ref:
            assert seen[k].dtype == ref[k].dtype and seen[k].tobytes() == ref[k].tobytes(), k
        assert index["metadata"]["total_size"] == sum(v.nbytes for v in ref.values())
        print(len(set(index["weight_map"].values())))
        """, [TestSupport.fixture("hard.safetensors"), dir + "/out"])
        #expect(out == "2\n")  // the 80 kB tensor alone, everything else together
    }
}
