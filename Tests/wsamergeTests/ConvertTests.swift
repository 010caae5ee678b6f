import Foundation
import Testing

/// `wsamerge convert`: byte-exact copies between formats, dtype changes rounded to nearest
/// even (checked against numpy, ml_dtypes and an exact reference), sharding, and the output
/// safety rules (inputs never overwritten, existing outputs only with --force).
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct ConvertTests {
    func convert(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = try TestSupport.wsamerge(["convert"] + arguments)
        #expect(result.status == 0, "\(arguments): \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stdout.isEmpty && result.stderr.isEmpty, sourceLocation: sourceLocation)
    }

    /// Python: for each triple `a b meta|-` of `sys.argv[1:]`, the tensors of files `a` and `b` (any
    /// format) are the same bytes in C order (and with `meta`, the same metadata). One process
    /// checks every pair of a test: starting Python and numpy costs more than the checks.
    static let sameTensors = """
    def load(path):
        if path.endswith(".npz"):
            z = np.load(path, allow_pickle=False)
            return {k: z[k] for k in z.files}, list(z.files), {}
        if path.endswith(".npy"):
            return {os.path.basename(path)[:-4]: np.load(path, allow_pickle=False)}, [os.path.basename(path)[:-4]], {}
        meta, tensors, order = st_raw(path)
        return {k: (tensors[k][0], tensors[k][1], tensors[k][2]) for k in order}, order, meta

    def canonical(v):
        if isinstance(v, tuple):
            return v
        a = np.asarray(v, order="C")
        return (a.dtype.newbyteorder("<").str, list(a.shape), a.astype(a.dtype.newbyteorder("<")).tobytes())

    def code(v):
        if isinstance(v, tuple):
            return v[0]
        return {"b1": "BOOL", "u1": "U8", "i1": "I8", "u2": "U16", "i2": "I16", "u4": "U32", "i4": "I32", "u8": "U64",
                "i8": "I64", "f2": "F16", "f4": "F32", "f8": "F64", "c8": "C64"}[v.dtype.str[1:]]

    args = sys.argv[1:]
    for i in range(0, len(args), 3):
        pa, pb, meta = args[i:i + 3]
        a, a_order, a_meta = load(pa)
        b, b_order, b_meta = load(pb)
        assert a_order == b_order, (pa, pb, a_order, b_order)
        for k in a_order:
            ca, cb = canonical(a[k]), canonical(b[k])
            assert code(a[k]) == code(b[k]), (pa, pb, k, code(a[k]), code(b[k]))
            assert list(ca[1]) == list(cb[1]), (pa, pb, k, ca[1], cb[1])
            assert ca[2] == cb[2], (pa, pb, k)
        if meta == "meta":
            assert a_meta == b_meta, (pa, pb, a_meta, b_meta)
    print("same")
    """

    func expectSameTensors(_ a: String, _ b: String, metadata: Bool = false,
                           sourceLocation: SourceLocation = #_sourceLocation) throws {
        try expectSameTensors([(a, b, metadata)], sourceLocation: sourceLocation)
    }

    /// Every pair in one Python process.
    func expectSameTensors(_ pairs: [(String, String, Bool)], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let out = try TestSupport.pythonOK(Self.sameTensors, pairs.flatMap { [$0.0, $0.1, $0.2 ? "meta" : "-"] },
                                           sourceLocation: sourceLocation)
        #expect(out == "same\n", sourceLocation: sourceLocation)
    }

    // MARK: byte-exact copies

    @Test(arguments: ["basic.safetensors", "dtypes.safetensors", "subbyte.safetensors", "hard.safetensors", "sharded"])
    func safetensorsRoundTripIsByteExact(fixture: String) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let input = TestSupport.fixture(fixture)
        try convert([input, "-o", dir + "/a.safetensors"])
        try expectSameTensors(input, dir + "/a.safetensors", metadata: true)
        // Deterministic bytes, and a second round trip changes nothing.
        try convert([input, "-o", dir + "/b.safetensors"])
        try convert([dir + "/a.safetensors", "-o", dir + "/c.safetensors"])
        let a = TestSupport.read(dir + "/a.safetensors")
        #expect(a != nil && a == TestSupport.read(dir + "/b.safetensors") && a == TestSupport.read(dir + "/c.safetensors"))
        // The header: __metadata__ first, data aligned to 8 bytes, the file ends with the data.
        let check = try TestSupport.pythonOK("""
        blob = open(sys.argv[1], "rb").read()
        n = struct.unpack("<Q", blob[:8])[0]
        assert (8 + n) % 8 == 0, n
        header = json.loads(blob[8:8 + n])
        keys = list(header)
        if "__metadata__" in header:
            assert keys[0] == "__metadata__"
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        assert 8 + n + max(ends + [0]) == len(blob)
        print("ok")
        """, [dir + "/a.safetensors"])
        #expect(check == "ok\n")
    }

    @Test(arguments: ["hard.safetensors", "savez.npz", "savez_compressed.npz"])
    func safetensorsNpzSafetensors(fixture: String) throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let input = TestSupport.fixture(fixture)
        try convert([input, "-o", dir + "/m.npz"])
        try convert([input, "--compress", "-o", dir + "/c.npz"])
        try expectSameTensors(input, dir + "/m.npz")
        try expectSameTensors(input, dir + "/c.npz")
        try convert([dir + "/m.npz", "-o", dir + "/back.safetensors"])
        try convert([dir + "/c.npz", "-o", dir + "/back2.safetensors"])
        try expectSameTensors(input, dir + "/back.safetensors")
        #expect(TestSupport.read(dir + "/back.safetensors") == TestSupport.read(dir + "/back2.safetensors"))
        // npz output is deterministic too.
        try convert([input, "--compress", "-o", dir + "/c2.npz"])
        #expect(TestSupport.read(dir + "/c.npz") == TestSupport.read(dir + "/c2.npz"))
    }

    @Test func bf16ToNpzNeedsAnF32Conversion() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let refused = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "-o", dir + "/m.npz"])
        TestSupport.expectRefusal(refused, code: 65, mentions: [dir + "/m.npz", "BF16", "--dtype F32"])
        #expect(TestSupport.listing(dir).isEmpty)
        try convert([TestSupport.fixture("basic.safetensors"), "--dtype", "F32", "-o", dir + "/m.npz"])
        let out = try TestSupport.pythonOK("""
        z = np.load(sys.argv[2], allow_pickle=False)
        ref = st_arrays(sys.argv[1])
        assert list(z.files) == list(ref), (z.files, list(ref))
        for k in ref:
            assert z[k].dtype == np.float32 and same_values(z[k], ref[k].astype(np.float64)), k
        print("ok")
        """, [TestSupport.fixture("basic.safetensors"), dir + "/m.npz"])
        #expect(out == "ok\n")
    }

    /// Every `.npy` fixture (orders, byte orders, versions, dtypes) converts to safetensors and to
    /// `.npy` with the same C-order bytes; checked in one Python process.
    @Test func npyBecomesLittleEndianCOrder() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        var pairs: [(String, String, Bool)] = []
        for name in ["c_order", "fortran", "fortran_be_i2", "be_f4", "be_i8", "scalar", "empty", "half", "bool",
                     "uint64", "int8", "v2", "v3", "nan_inf"] {
            let input = TestSupport.fixture("npy/\(name).npy")
            try convert([input, "-o", dir + "/\(name).safetensors"])
            try FileManager.default.createDirectory(atPath: dir + "/npy-\(name)", withIntermediateDirectories: true)
            try convert([input, "-o", dir + "/npy-\(name)/\(name).npy"])
            pairs += [(input, dir + "/\(name).safetensors", false), (input, dir + "/npy-\(name)/\(name).npy", false)]
        }
        try expectSameTensors(pairs)
    }

    @Test func npyOutputHoldsOneSelectedTensor() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try convert([TestSupport.fixture("hard.safetensors"), "--include", "^large$", "-o", dir + "/large.npy"])
        let out = try TestSupport.pythonOK("""
        a = np.load(sys.argv[2], allow_pickle=False)
        ref = st_arrays(sys.argv[1])["large"]
        assert a.dtype == np.float32 and a.shape == (100, 200) and a.tobytes() == ref.tobytes()
        print("ok")
        """, [TestSupport.fixture("hard.safetensors"), dir + "/large.npy"])
        #expect(out == "ok\n")
        let many = try TestSupport.wsamerge(["convert", TestSupport.fixture("hard.safetensors"), "-o", dir + "/all.npy"])
        TestSupport.expectRefusal(many, code: 64, mentions: ["--include"])
        #expect(!TestSupport.fileExists(dir + "/all.npy"))
    }

    @Test func includeAndExcludeSelectWhatIsWritten() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try convert([TestSupport.fixture("basic.safetensors"), "--include", "layers", "--exclude", "norm", "-o", dir + "/m.safetensors"])
        let report = try TestSupport.wsamerge(["inspect", dir + "/m.safetensors"]).json() as? [String: Any]
        let names = (report?["tensors"] as? [[String: Any]] ?? []).map { $0["name"] as? String ?? "" }
        #expect(names == ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"])
        #expect(report?["metadata"] as? [String: String] == ["format": "pt"])
        let none = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "--include", "zzz", "-o", dir + "/n.safetensors"])
        TestSupport.expectRefusal(none, code: 64, mentions: ["--include"])
        #expect(!TestSupport.fileExists(dir + "/n.safetensors"))
    }

    // MARK: dtype changes

    /// Python reference: exact nearest-even encoding of float64 values into a narrow float type,
    /// from the sorted grid of its finite values (independent of ml_dtypes' float64 path, which
    /// rounds through float32 and so rounds some values twice).
    static let referenceEncoder = """
    def rne(x, dtype, bits, overflow_code):
        n = 1 << bits
        utype = np.uint16 if bits == 16 else np.uint8
        vals = np.arange(n // 2, dtype=utype).view(dtype).astype(np.float64)
        last = int(np.nonzero(np.isfinite(vals))[0].max())
        grid = np.append(vals[:last + 1], 2 * vals[last] - vals[last - 1])
        codes = np.append(np.arange(last + 1), overflow_code)
        with np.errstate(invalid="ignore"):
            a = np.abs(x)
            lo = np.clip(np.searchsorted(grid, a, side="right") - 1, 0, len(grid) - 2)
            dlo, dhi = a - grid[lo], grid[lo + 1] - a
            up = (dhi < dlo) | ((dhi == dlo) & (codes[lo] % 2 == 1))
            code = np.where(up, codes[lo + 1], codes[lo])
            code = np.where(a >= grid[-1], overflow_code, code)
        code = code | np.where(np.signbit(x), n // 2, 0)
        return code.astype(utype), np.isnan(x)

    TARGETS = {"BF16": (ml_dtypes.bfloat16, 16, 0x7F80), "F16": (np.float16, 16, 0x7C00),
               "F8_E4M3": (ml_dtypes.float8_e4m3fn, 8, 0x7F), "F8_E5M2": (ml_dtypes.float8_e5m2, 8, 0x7C)}

    def expected_bytes(x, target):
        # (bytes, NaN mask) of float64 values x encoded as target.
        if target == "F64":
            return x.astype("<f8").tobytes(), np.isnan(x)
        if target == "F32":
            with np.errstate(over="ignore"):
                return x.astype("<f4").tobytes(), np.isnan(x)
        code, nan = rne(x, *TARGETS[target])
        return code.tobytes(), nan

    """

    @Test func dtypeChangesRoundToNearestEven() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let input = dir + "/in.safetensors"
        try TestSupport.pythonOK(Self.referenceEncoder + """
        from safetensors.numpy import save_file
        rng = np.random.default_rng(7)
        def mids(dtype, bits, count):
            # Exact midpoints between neighbouring values, and the doubles just around them.
            codes = rng.integers(0, (1 << (bits - 1)) - 2, count).astype(np.uint16 if bits == 16 else np.uint8)
            lo = codes.view(dtype).astype(np.float64)
            hi = (codes + 1).view(dtype).astype(np.float64)
            ok = np.isfinite(lo) & np.isfinite(hi)
            m = (lo[ok] + hi[ok]) / 2
            return np.concatenate([m, np.nextafter(m, np.inf), np.nextafter(m, -np.inf), -m])
        specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 1e-45, 1.5e-45, 2.9802322387695312e-08,
                    65504.0, 65519.99, 65520.0, 448.0, 464.0, 464.00001, 480.0, 57344.0, 61439.9, 61440.0,
                    3.3895313892515355e38, 3.3961775292304e38, 3.4028235677973366e38, 3.5e38, 1e300, -1e300,
                    1 + 2**-8 + 2**-30, 1 + 2**-4 + 2**-40, 1 + 2**-11 + 2**-40, 1 + 2**-24 + 2**-50]
        f64 = np.concatenate([rng.standard_normal(3000) * 10.0 ** rng.uniform(-45, 40, 3000), specials,
                              mids(ml_dtypes.bfloat16, 16, 2000), mids(np.float16, 16, 2000),
                              mids(ml_dtypes.float8_e4m3fn, 8, 200), mids(ml_dtypes.float8_e5m2, 8, 200),
                              mids(np.float32, 16, 0)])
        f32 = np.concatenate([mids(ml_dtypes.bfloat16, 16, 2000), mids(np.float16, 16, 1000),
                              (rng.standard_normal(2000) * 10.0 ** rng.uniform(-40, 38, 2000))]).astype(np.float32)
        save_file({
            "f64": f64.reshape(-1),
            "f32": f32.reshape(-1, 1),
            "bf16_all": np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(256, 256),
            "f16_all": np.arange(65536, dtype=np.uint16).view(np.float16),
            "e4m3_all": np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
            "e5m2_all": np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e5m2),
            "i32": np.arange(-5, 5, dtype=np.int32),
            "flag": np.array([True, False]),
        }, sys.argv[1], metadata={"format": "pt"})
        """, [input])
        let targets = ["F64", "F32", "F16", "BF16"]
        for target in targets {
            try convert([input, "--dtype", target, "-o", dir + "/\(target).safetensors"])
        }
        let out = try TestSupport.pythonOK(Self.referenceEncoder + """
        meta, src, order = st_raw(sys.argv[1])
        checked = 0
        for target in sys.argv[2:]:
            m, out, out_order = st_raw(os.path.join(os.path.dirname(sys.argv[1]), target + ".safetensors"))
            assert m == meta and out_order == order, target
            for name in order:
                dtype, shape, data = src[name]
                odtype, oshape, odata = out[name]
                assert oshape == shape, (target, name)
                if dtype in ("I32", "BOOL"):
                    assert odtype == dtype and odata == data, (target, name)
                    continue
                assert odtype == (dtype if dtype == target else target), (target, name, odtype)
                x = np.frombuffer(data, dtype=NP[dtype]).astype(np.float64).reshape(-1)
                want, nan = expected_bytes(x, odtype)
                width = len(want) // max(len(x), 1)
                got_v = np.frombuffer(odata, dtype=NP[odtype]).astype(np.float64)
                assert np.array_equal(np.isnan(got_v), nan), (target, name, "NaN positions")
                g = np.frombuffer(odata, dtype=np.uint8).reshape(-1, width)[~nan]
                w = np.frombuffer(want, dtype=np.uint8).reshape(-1, width)[~nan]
                bad = np.nonzero(np.any(g != w, axis=1))[0]
                assert len(bad) == 0, (target, name, [(x[~nan][i], g[i].tobytes().hex(), w[i].tobytes().hex()) for i in bad[:5]])
                # Where numpy or ml_dtypes round once (F16/F32 from anything, BF16 from float32-exact values), they agree.
                if odtype in ("F32", "F16") or (odtype == "BF16" and dtype != "F64"):
                    with np.errstate(over="ignore", invalid="ignore"):
                        lib = x.astype(NP[odtype]).astype(np.float64)
                    assert same_values(lib, got_v), (target, name)
                checked += 1
        print(checked)
        """, [input] + targets)
        #expect(out == "\(4 * 6)\n")  // 4 targets × 6 float tensors
    }

    @Test func everyDtypeDecodesExactlyToF64() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try convert([TestSupport.fixture("dtypes.safetensors"), "--dtype", "F64", "-o", dir + "/m.safetensors"])
        let out = try TestSupport.pythonOK("""
        _, src, order = st_raw(sys.argv[1])
        _, out, out_order = st_raw(sys.argv[2])
        assert order == out_order
        floats = 0
        for k in order:
            dtype, shape, data = src[k]
            odtype, oshape, odata = out[k]
            assert oshape == shape
            if dtype.startswith("F") or dtype == "BF16":
                assert odtype == "F64", (k, odtype)
                want = np.frombuffer(data, dtype=NP[dtype]).astype(np.float64)
                assert same_values(np.frombuffer(odata, dtype=np.float64), want), k
                floats += 1
            else:
                assert odtype == dtype and odata == data, k  # integers, bool and C64 are copied
        print(floats)
        """, [TestSupport.fixture("dtypes.safetensors"), dir + "/m.safetensors"])
        #expect(out == "11\n")  // F16 BF16 F32 F64, five F8 codes, scalar, empty
    }

    @Test func subByteTypesCopyButDoNotConvert() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let refused = try TestSupport.wsamerge(["convert", TestSupport.fixture("subbyte.safetensors"), "--dtype", "F32", "-o", dir + "/m.safetensors"])
        TestSupport.expectRefusal(refused, code: 65, mentions: ["subbyte.safetensors", "'f4'", "F4"])
        #expect(TestSupport.listing(dir).isEmpty)
        let badTarget = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "--dtype", "I32", "-o", dir + "/m.safetensors"])
        TestSupport.expectRefusal(badTarget, code: 64, mentions: ["'I32' is invalid for '--dtype"])
        for target in ["F8_E4M3", "C64", "F4"] {
            let refused = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "--dtype", target, "-o", dir + "/m.safetensors"])
            TestSupport.expectRefusal(refused, code: 64, mentions: ["'\(target)' is invalid for '--dtype"])
        }
        let unknown = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "--dtype", "f32", "-o", dir + "/m.safetensors"])
        TestSupport.expectRefusal(unknown, code: 64)
        #expect(TestSupport.listing(dir).isEmpty)
    }

    // MARK: sharding

    @Test func shardsWithMaxShardSize() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let input = TestSupport.fixture("dtypes.safetensors")
        try convert([input, "--max-shard-size", "1kB", "-o", dir + "/out"])
        let files = TestSupport.listing(dir + "/out")
        let count = files.count - 1
        #expect(count > 2)
        #expect(files == (1...count).map { String(format: "model-%05d-of-%05d.safetensors", $0, count) } + ["model.safetensors.index.json"])
        let out = try TestSupport.pythonOK("""
        index = json.load(open(os.path.join(sys.argv[2], "model.safetensors.index.json")))
        meta, src, order = st_raw(sys.argv[1])
        _, out, out_order = st_raw(sys.argv[2])
        assert out_order == order, (out_order, order)
        assert index["metadata"]["total_size"] == sum(len(v[2]) for v in src.values())
        assert set(index["metadata"]) == {"total_size"}, index["metadata"]
        assert set(index["weight_map"]) == set(order)
        for shard in set(index["weight_map"].values()):
            m, tensors, names = st_raw(os.path.join(sys.argv[2], shard))
            size = sum(len(t[2]) for t in tensors.values())
            assert size <= 1000 or len(names) == 1, (shard, size)
            assert m == meta
            assert all(index["weight_map"][n] == shard for n in names)
        for k in order:
            assert out[k] == src[k], k
        print("ok")
        """, [input, dir + "/out"])
        #expect(out == "ok\n")
        // Read back as a directory and as an index: the same tensors as the input.
        try convert([dir + "/out", "-o", dir + "/joined.safetensors"])
        try expectSameTensors(input, dir + "/joined.safetensors", metadata: true)
        try expectSameTensors(input, dir + "/out/model.safetensors.index.json")
    }

    @Test func aSingleShardIsModelSafetensorsWithoutAnIndex() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        try convert([TestSupport.fixture("sharded"), "-o", dir + "/one/"])
        #expect(TestSupport.listing(dir + "/one") == ["model.safetensors"])
        try expectSameTensors(TestSupport.fixture("sharded"), dir + "/one/model.safetensors")
        try convert([TestSupport.fixture("basic.safetensors"), "--max-shard-size", "5GB", "-o", dir + "/two"])
        #expect(TestSupport.listing(dir + "/two") == ["model.safetensors"])
        let bad = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "--max-shard-size", "lots", "-o", dir + "/x"])
        TestSupport.expectRefusal(bad, code: 64, mentions: ["lots"])
    }

    // MARK: output safety

    @Test func refusesToOverwriteItsInput() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let input = dir + "/in.safetensors"
        try FileManager.default.copyItem(atPath: TestSupport.fixture("basic.safetensors"), toPath: input)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.safetensors", withDestinationPath: input)
        try FileManager.default.linkItem(atPath: input, toPath: dir + "/hard.safetensors")
        let original = TestSupport.read(input)
        for (source, output) in [(input, input), (input, dir + "/link.safetensors"), (input, dir + "/hard.safetensors"),
                                 (dir + "/link.safetensors", input), (dir + "/hard.safetensors", dir + "/link.safetensors"),
                                 (input, dir + "/../" + (dir as NSString).lastPathComponent + "/in.safetensors")] {
            for force in [[], ["--force"]] {
                let result = try TestSupport.wsamerge(["convert", source, "-o", output] + force)
                TestSupport.expectRefusal(result, code: 73, mentions: [output, "input"])
            }
        }
        #expect(TestSupport.read(input) == original)
        #expect(TestSupport.listing(dir) == ["hard.safetensors", "in.safetensors", "link.safetensors"])
        // An input read through a sharded index is protected too.
        let shards = dir + "/shards"
        try convert([TestSupport.fixture("dtypes.safetensors"), "--max-shard-size", "2kB", "-o", shards])
        let shard = TestSupport.listing(shards).first!
        let result = try TestSupport.wsamerge(["convert", shards, "-o", shards + "/" + shard, "--force"])
        TestSupport.expectRefusal(result, code: 73, mentions: [shard])
    }

    @Test func existingOutputNeedsForce() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let output = dir + "/out.safetensors"
        try TestSupport.write(Array("precious".utf8), to: output)
        let refused = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "-o", output])
        TestSupport.expectRefusal(refused, code: 73, mentions: [output, "--force"])
        #expect(TestSupport.read(output) == Array("precious".utf8))
        try convert([TestSupport.fixture("basic.safetensors"), "-o", output, "--force"])
        try expectSameTensors(TestSupport.fixture("basic.safetensors"), output)
        #expect(TestSupport.listing(dir) == ["out.safetensors"], "no temporary left behind")
        // npz and sharded outputs follow the same rule.
        try TestSupport.write([1], to: dir + "/out.npz")
        TestSupport.expectRefusal(try TestSupport.wsamerge(["convert", TestSupport.fixture("savez.npz"), "-o", dir + "/out.npz"]), code: 73)
        #expect(TestSupport.read(dir + "/out.npz") == [1])
        try convert([TestSupport.fixture("savez.npz"), "-o", dir + "/out.npz", "--force"])
        try expectSameTensors(TestSupport.fixture("savez.npz"), dir + "/out.npz")
        try FileManager.default.createDirectory(atPath: dir + "/sharded", withIntermediateDirectories: false)
        try TestSupport.write([2], to: dir + "/sharded/model.safetensors")
        TestSupport.expectRefusal(try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "-o", dir + "/sharded/"]), code: 73)
        #expect(TestSupport.read(dir + "/sharded/model.safetensors") == [2])
    }

    @Test func outputDirectoryMustExist() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { TestSupport.remove(dir) }
        let result = try TestSupport.wsamerge(["convert", TestSupport.fixture("basic.safetensors"), "-o", dir + "/missing/out.safetensors"])
        TestSupport.expectRefusal(result, code: 73, mentions: ["missing"])
        #expect(TestSupport.listing(dir).isEmpty)
    }
}
