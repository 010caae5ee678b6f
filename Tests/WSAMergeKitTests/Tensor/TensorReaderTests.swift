import Foundation
import Testing
@testable import WSAMergeKit

/// `TensorReader.reads` splits a read into pieces that the workers run in any order; the bytes
/// must be those of one sequential read, big-endian elements swapped piece by piece.
struct TensorReaderTests {
    /// 1,000 float64 values 0, 1.5, 3, … stored big-endian in a `.npy` file, and as a safetensors file.
    func files() throws -> [String] {
        let values = (0..<1000).map { Double($0) * 1.5 }
        let big = values.flatMap { Bytes.le($0).reversed() }
        let npy = try Bytes.temporaryFile(Bytes.npy("{'descr': '>f8', 'fortran_order': False, 'shape': (1000,), }", data: Array(big)), name: "big.npy")
        let little = values.flatMap { Bytes.le($0) }
        let st = try Bytes.temporaryFile(Bytes.safetensors(#"{"w":{"dtype":"F64","shape":[1000],"data_offsets":[0,8000]}}"#, data: little), name: "m.safetensors")
        return [npy, st]
    }

    @Test(arguments: [8, 24, 100, 4096, 1 << 20])
    func piecesInAnyOrderGiveTheSequentialBytes(pieceBytes: Int) throws {
        let paths = try files()
        defer { for path in paths { Bytes.removeDirectory(of: path) } }
        let expected = (0..<1000).flatMap { Bytes.le(Double($0) * 1.5) }
        for path in paths {
            let reader = try CheckpointReader.open(path).reader(for: 0)
            // Two calls (3,000 bytes, then the rest), each run back to front.
            let head = RawBuffer(byteCount: 3000), tail = RawBuffer(byteCount: 5000)
            let first = reader.reads(into: head, count: 3000, pieceBytes: pieceBytes)
            let piece = max(8, pieceBytes / 8 * 8)
            #expect(first.count == (3000 + piece - 1) / piece)
            for read in first.reversed() { try read.run() }
            for read in reader.reads(into: tail, count: 5000, pieceBytes: pieceBytes).reversed() { try read.run() }
            let bytes = Array(UnsafeRawBufferPointer(head.prefix(3000))) + Array(UnsafeRawBufferPointer(tail.prefix(5000)))
            #expect(bytes == expected, "\(path)")
            #expect(reader.remaining == 0)
        }
    }

    /// Archive members (here deflated, one of them Fortran-ordered and one big-endian, written by
    /// numpy) only stream in order: one read per call, which moves the position when it runs.
    @Test func archiveMembersAreOneReadInOrder() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../fixtures/savez_compressed.npz").path
        let checkpoint = try CheckpointReader.open(path)
        for index in checkpoint.tensors.indices where checkpoint.tensors[index].byteCount >= 16 {
            let expected = try checkpoint.reader(for: index).readAll()
            let reader = try checkpoint.reader(for: index)
            let half = expected.count / 2 / 8 * 8
            let head = RawBuffer(byteCount: half), tail = RawBuffer(byteCount: expected.count - half)
            let first = reader.reads(into: head, count: half, pieceBytes: 8)
            #expect(first.count == 1 && reader.position == 0)
            try first[0].run()
            #expect(reader.position == half)
            for read in reader.reads(into: tail, count: expected.count - half, pieceBytes: 8) { try read.run() }
            let bytes = Array(UnsafeRawBufferPointer(head.prefix(half))) + Array(UnsafeRawBufferPointer(tail.prefix(expected.count - half)))
            #expect(bytes == expected, "\(checkpoint.tensors[index].name)")
        }
    }

    /// Tensors that are read whole into memory (Fortran order) or from a shared archive are not
    /// read side by side.
    @Test func whichCheckpointsReadTensorsInParallel() throws {
        let data = (0..<6).flatMap { Bytes.le(Float($0)) }
        let c = try Bytes.temporaryFile(Bytes.npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data: data), name: "c.npy")
        let f = try Bytes.temporaryFile(Bytes.npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data: data), name: "f.npy")
        let v = try Bytes.temporaryFile(Bytes.npy("{'descr': '<f4', 'fortran_order': True, 'shape': (6,), }", data: data), name: "v.npy")
        defer { for path in [c, f, v] { Bytes.removeDirectory(of: path) } }
        #expect(try CheckpointReader.open(c).readsTensorsInParallel)
        #expect(try !CheckpointReader.open(f).readsTensorsInParallel)
        #expect(try CheckpointReader.open(v).readsTensorsInParallel)  // one axis: the same order either way
        let npz = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../fixtures/savez.npz").path
        #expect(try !CheckpointReader.open(npz).readsTensorsInParallel)
    }

    /// A file cut short after it was opened: the piece that reaches past the end is an I/O error,
    /// as a sequential read is; the pieces before it are unaffected.
    @Test func aTruncatedFileFailsInThePieceThatReachesTheEnd() throws {
        let paths = try files()
        defer { for path in paths { Bytes.removeDirectory(of: path) } }
        let reader = try CheckpointReader.open(paths[1]).reader(for: 0)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: paths[1]))
        try handle.truncate(atOffset: try handle.seekToEnd() - 100)
        try handle.close()
        let buffer = RawBuffer(byteCount: 8000)
        let reads = reader.reads(into: buffer, count: 8000, pieceBytes: 4000)
        try reads[0].run()
        let error = #expect(throws: WSAMergeError.self) { try reads[1].run() }
        #expect(error?.exitCode == 74 && error?.description.contains("truncated while reading") == true)
    }

    /// `sameBytes` compares whole tensors past its 1 MiB chunk: a difference in the last byte of
    /// the second chunk counts, and readers already moved compare from where they are.
    @Test func sameBytesComparesEveryChunk() throws {
        let count = 300_000  // 1.2 MB of float32: a full chunk and part of another
        var values = (0..<count).map { Float($0) * 0.25 }
        let same = values.flatMap { Bytes.le($0) }
        values[count - 1] = -1
        let last = values.flatMap { Bytes.le($0) }
        let header = #"{"w":{"dtype":"F32","shape":[\#(count)],"data_offsets":[0,\#(4 * count)]}}"#
        let paths = try [same, same, last].enumerated().map { try Bytes.temporaryFile(Bytes.safetensors(header, data: $0.element), name: "m\($0.offset).safetensors") }
        defer { for path in paths { Bytes.removeDirectory(of: path) } }
        func readers(_ which: [Int]) throws -> [TensorReader] { try which.map { try CheckpointReader.open(paths[$0]).reader(for: 0) } }
        #expect(try TensorReader.sameBytes(readers([0, 1])))
        #expect(try !TensorReader.sameBytes(readers([0, 1, 2])))
        #expect(try !TensorReader.sameBytes(readers([2, 0])))
        let moved = try readers([0, 2]), alike = try readers([0, 1])
        for reader in moved + alike { try reader.skip(4 * count - 8) }
        #expect(try !TensorReader.sameBytes(moved))
        #expect(try TensorReader.sameBytes(alike))
    }
}
