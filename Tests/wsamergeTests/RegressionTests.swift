import Foundation
import Testing

/// Inputs that once went wrong (found in review), each checked against what numpy or the
/// safetensors package reads from the same bytes.
@Suite(.enabled(if: TestSupport.hasPython, "needs the test venv (numpy, safetensors): run make test"))
struct RegressionTests {
    static let files: (dir: String, ok: Bool) = {
        let dir = NSTemporaryDirectory() + "wsamerge-regressions-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let run = try? TestSupport.python("""
            import os, struct, sys, zlib
            import numpy as np
            from safetensors.numpy import save_file
            d = sys.argv[1]
            # .npy whose 1.0 header length has a low byte >= 246 (502 = 0x1F6).
            text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
            text += b" " * (502 - len(text) - 1) + b"\\n"
            open(os.path.join(d, "h502.npy"), "wb").write(b"\\x93NUMPY\\x01\\x00" + struct.pack("<H", 502) + text
                                                           + np.arange(6, dtype="<f4").tobytes())
            # safetensors whose length prefix starts with '{' (31520 = 0x7B20) or is 123.
            import json
            for length in (31520, 123):
                def header(k):
                    return json.dumps({"__metadata__": {"format": "pt", "pad": "x" * k},
                                       "w": {"dtype": "F32", "shape": [40], "data_offsets": [0, 160]}}).encode()
                h = header(length - len(header(0)))
                assert len(h) == length
                open(os.path.join(d, f"len{length}.safetensors"), "wb").write(
                    struct.pack("<Q", length) + h + np.arange(40, dtype="<f4").tobytes())
            # Big-endian complex64.
            np.save(os.path.join(d, "cbe.npy"), np.array([1 + 2j, 3 - 4j], dtype=">c8"))
            # Tiny archives declaring huge arrays: one Fortran-order member of 320 GB, and twenty
            # members of 2^59 bytes each (the sum overflows).
            def member(name, shape, fortran, offset):
                hdr = b"{'descr': '<f8', 'fortran_order': %s, 'shape': %s, }" % (b"True" if fortran else b"False", str(shape).encode())
                hdr += b" " * ((64 - (10 + len(hdr) + 1) % 64) % 64) + b"\\n"
                head = b"\\x93NUMPY\\x01\\x00" + struct.pack("<H", len(hdr)) + hdr
                declared = len(head) + 8 * int(np.prod(shape, dtype=object))
                co = zlib.compressobj(6, zlib.DEFLATED, -15)
                comp = co.compress(head + bytes(64)) + co.flush()
                crc = zlib.crc32(head + bytes(64))
                extra = struct.pack("<HHQQ", 1, 16, declared, len(comp))
                local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(name), len(extra)) + name + extra
                cextra = struct.pack("<HHQQQ", 1, 24, declared, len(comp), offset)
                central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                                      len(name), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + name + cextra
                return local + comp, central
            def archive(path, members):
                body, cds = b"", b""
                for name, shape, fortran in members:
                    l, c = member(name, shape, fortran, len(body)); body += l; cds += c
                n = len(members)
                z64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(cds), len(body))
                loc = struct.pack("<IIQI", 0x07064B50, 0, len(body) + len(cds), 1)
                end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(cds), len(body), 0)
                open(path, "wb").write(body + cds + z64 + loc + end)
            archive(os.path.join(d, "fortran_bomb.npz"), [(b"w.npy", (200000, 200000), True)])
            archive(os.path.join(d, "sum_bomb.npz"), [(b"m%d.npy" % i, (2 ** 56,), False) for i in range(20)])
            """, [dir])
        return (dir, run?.status == 0)
    }()

    @Test func npyHeaderLengthWithHighLowByte() throws {
        #expect(Self.files.ok)
        let run = try TestSupport.wsamerge(["stats", Self.files.dir + "/h502.npy"])
        #expect(run.status == 0, "\(run.stderr)")
        let tensor = ((try run.json() as? [String: Any])?["tensors"] as? [[String: Any]])?.first
        #expect(tensor?["mean"] as? Double == 2.5)
        #expect(tensor?["max"] as? Double == 5)
    }

    @Test(arguments: ["len31520.safetensors", "len123.safetensors"])
    func safetensorsLengthPrefixStartingWithABrace(_ name: String) throws {
        #expect(Self.files.ok)
        let run = try TestSupport.wsamerge(["stats", Self.files.dir + "/" + name])
        #expect(run.status == 0, "\(run.stderr)")
        let tensor = ((try run.json() as? [String: Any])?["tensors"] as? [[String: Any]])?.first
        #expect(tensor?["mean"] as? Double == 19.5)
    }

    @Test func bigEndianComplexKeepsItsParts() throws {
        #expect(Self.files.ok)
        let out = Self.files.dir + "/cbe.safetensors"
        #expect(try TestSupport.wsamerge(["convert", Self.files.dir + "/cbe.npy", "-o", out, "--force"]).status == 0)
        let check = try TestSupport.python("""
            import sys, numpy as np
            from safetensors.numpy import load_file
            assert list(load_file(sys.argv[1])["cbe"]) == [1 + 2j, 3 - 4j], load_file(sys.argv[1])
            """, [out])
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test func tinyArchivesDeclaringHugeArraysAreRefused() throws {
        #expect(Self.files.ok)
        for (name, text) in [("fortran_bomb.npz", "Fortran-order"), ("sum_bomb.npz", "add up")] {
            for command in [["stats"], ["inspect", "--format", "table"], ["convert", "-o", Self.files.dir + "/x.safetensors"]] {
                let path = Self.files.dir + "/" + name
                let arguments = command.count == 1 || command[0] == "inspect" ? command + [path] : ["convert", path] + command.dropFirst()
                let run = try TestSupport.wsamerge(arguments)
                if command[0] == "inspect" && name == "fortran_bomb.npz" {
                    #expect(run.status == 0, "inspect reads headers only: \(run.stderr)")
                } else if command[0] == "stats" && name == "fortran_bomb.npz" {
                    // stats reads a Fortran-order array as stored, any size: the member ends early
                    TestSupport.expectRefusal(run, code: 65, mentions: [name, "ends after 64 of"])
                } else {
                    TestSupport.expectRefusal(run, code: 65, mentions: [name, text])
                }
            }
        }
    }
}
