import Foundation
import Testing
@testable import WSAMergeKit

/// The committed torch fixtures (`fixtures/torch/`, written by real torch.save).
enum PyTorchFixtures {
    static let directory: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<5 { url.deleteLastPathComponent() }
        return url.path + "/fixtures/torch"
    }()

    /// Fixture → its safetensors twin (written by safetensors.torch from the same tensors).
    static let twins: [(String, String)] = [
        ("dtypes_p2.pt", "dtypes_p2"), ("dtypes_p4.pt", "dtypes_p4"), ("dtypes_p5.pt", "dtypes_p5"),
        ("bigendian.pt", "bigendian"), ("views.pt", "views"), ("views_p4.pt", "views_p4"),
        ("lightning.ckpt", "lightning"), ("fl_client.pth", "fl_client"), ("parameters.pt", "parameters"),
        ("lone_tensor.pt", "lone_tensor"), ("model_dir", "model_dir__pytorch_model"), ("sharded", "sharded"),
        ("sharded/pytorch_model.bin.index.json", "sharded"),
    ]

    /// The `data.pkl` of a fixture.
    static func pickle(of name: String) throws -> [UInt8] {
        let file = try ReadableFile(path: directory + "/" + name)
        let zip = try StoredZip(file)
        return try zip.read(zip.members.first { $0.name.hasSuffix("/data.pkl") }!, limit: 1 << 20)
    }
}

@Suite struct TorchCheckpointTests {
    @Test(arguments: PyTorchFixtures.twins.map(\.0))
    func everyTensorEqualsItsSafetensorsTwin(fixture: String) throws {
        let name = PyTorchFixtures.twins.first { $0.0 == fixture }!.1
        let checkpoint = try CheckpointReader.open(PyTorchFixtures.directory + "/" + fixture)
        let twin = try CheckpointReader.open(PyTorchFixtures.directory + "/expected/" + name + ".safetensors")
        #expect(checkpoint.format == (fixture.hasPrefix("sharded") ? .shardedPyTorch : .pytorch))
        #expect(Set(checkpoint.tensors.map(\.name)) == Set(twin.tensors.map(\.name)))
        for (i, tensor) in checkpoint.tensors.enumerated() {
            let j = try #require(twin.index(of: tensor.name))
            #expect(tensor.dtype == twin.tensors[j].dtype && tensor.shape == twin.tensors[j].shape, "\(tensor.name)")
            #expect(try checkpoint.reader(for: i).readAll() == twin.reader(for: j).readAll(), "\(tensor.name)")
        }
    }

    @Test func viewsAreSlicesOrStridedAndTiedWeightsShareTheirBytes() throws {
        let checkpoint = try CheckpointReader.open(PyTorchFixtures.directory + "/views.pt")
        func reader(_ name: String) throws -> TensorReader { try checkpoint.reader(for: checkpoint.index(of: name)!) }
        #expect(try reader("embed.weight").readAll() == reader("lm_head.weight").readAll())
        let embed = try reader("embed.weight").readAll().withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let transposed = try reader("transposed").readAll().withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        for i in 0..<4 { for j in 0..<6 { #expect(transposed[j * 4 + i] == embed[i * 6 + j]) } }
        // Offsets and strides read element by element, in C order.
        let offset = try reader("offset").readAll().withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(offset == (10..<16).map(Float.init))
        let everyOther = try reader("every_other").readAll().withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(everyOther == stride(from: 1, to: 40, by: 2).map(Float.init))
        let expanded = try reader("expanded").readAll().withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(expanded == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    }

    @Test func lightningLeavesAreListedByTheirPaths() throws {
        let checkpoint = try CheckpointReader.open(PyTorchFixtures.directory + "/lightning.ckpt")
        let leaves = Dictionary(uniqueKeysWithValues: checkpoint.nonTensors.map { ($0.name, $0.value) })
        #expect(leaves["epoch"] == "3")
        #expect(leaves["pytorch-lightning_version"] == "2.4.0")
        #expect(leaves["hyper_parameters.layers"] == "[4, 3, 2]")
        #expect(leaves["hyper_parameters.scheduler"] == "None")
        #expect(leaves["lr_schedulers"] == "[]")
        #expect(checkpoint.index(of: "state_dict.model.0.weight") != nil)
        #expect(checkpoint.index(of: "optimizer_states.0.state.0.exp_avg") != nil)
    }

    // MARK: views checked against their storages

    func entry(shape: [Int], strides: [Int], offset: Int, dtype: DType = .F32) -> TorchTensorEntry {
        TorchTensorEntry(name: "w", dtype: dtype, shape: shape, strides: zip(shape, strides).map { $0 <= 1 ? 0 : $1 },
                         storageKey: "0", storageElementBytes: 4, storageElements: 16, storageOffset: offset)
    }

    @Test func viewsInsideTheirStorageAreAcceptedAndOthersRefused() throws {
        let path = try Bytes.temporaryFile([UInt8](repeating: 0, count: 64))
        defer { Bytes.removeDirectory(of: path) }
        let file = try ReadableFile(path: path)
        func locate(_ e: TorchTensorEntry) throws -> any TensorSource {
            try PyTorchReader.locate(e, info: TensorInfo(name: "w", dtype: e.dtype, shape: e.shape, file: path), file: file, storageStart: 0, storageBytes: 64)
        }
        // Contiguous views are file slices at the offset; others are strided.
        if let slice = try locate(entry(shape: [2, 3], strides: [3, 1], offset: 10)) as? FileSlice { #expect(slice.offset == 40) } else { Issue.record("not a slice") }
        if !(try locate(entry(shape: [4, 4], strides: [1, 4], offset: 0)) is StridedSource) { Issue.record("not strided") }
        if !(try locate(entry(shape: [1, 16], strides: [999, 1], offset: 0)) is FileSlice) { Issue.record("size-1 stride matters") }
        _ = try locate(entry(shape: [0, 5], strides: [5, 1], offset: 1000))   // empty: touches nothing
        expectMalformed("reaches past its storage") { _ = try locate(entry(shape: [17], strides: [1], offset: 0)) }
        expectMalformed("reaches past its storage") { _ = try locate(entry(shape: [4, 4], strides: [4, 1], offset: 1)) }
        expectMalformed("reaches past its storage") { _ = try locate(entry(shape: [2], strides: [8], offset: 8)) }
        expectMalformed("overflows") { _ = try locate(entry(shape: [3, 2], strides: [Int.max / 2 + 1, 1], offset: 0)) }
        expectMalformed("overflows") { _ = try locate(entry(shape: [2], strides: [1], offset: Int.max)) }
    }

    // MARK: strided reads

    /// Random views of a storage of 0, 1, 2, …, read with chunk and span limits small enough to
    /// take every path (dense span, sparse runs, chunks that end mid-row), equal a naive gather.
    @Test func stridedStreamsGatherInCOrder() throws {
        let storage = (0..<5000).map { Float($0) }
        let path = try Bytes.temporaryFile([UInt8](repeating: 0xEE, count: 12) + storage.flatMap { Bytes.le($0) })
        defer { Bytes.removeDirectory(of: path) }
        let file = try ReadableFile(path: path)
        var rng = SplitMix(seed: 5)
        for trial in 0..<200 {
            let rank = 1 + Int(rng.next() % 4)
            let shape = (0..<rank).map { _ in 1 + Int(rng.next() % 7) }
            var strides = (0..<rank).map { _ in Int(rng.next() % 40) }
            if trial % 3 == 0 { strides = Array(strides.reversed()) }
            var extent = 0
            for (s, t) in zip(shape, strides) { extent += (s - 1) * t }
            let offset = Int(rng.next() % UInt64(5000 - extent))
            let view = StridedView(file: file, base: 12, width: 4, shape: shape, strides: strides.enumerated().map { shape[$0.offset] <= 1 ? 0 : $0.element }, offset: offset)
            var expected: [Float] = []
            var index = [Int](repeating: 0, count: rank)
            for _ in 0..<view.elementCount {
                expected.append(storage[offset + zip(index, strides).map { $0 * $1 }.reduce(0, +)])
                var d = rank - 1
                while d >= 0 { index[d] += 1; if index[d] < shape[d] { break }; index[d] = 0; d -= 1 }
            }
            for (chunk, dense) in [(1 << 18, 16 << 20), (7, 64), (5, 4), (1, 4)] {
                var stream = StridedStream(view: view, chunkElements: chunk, denseSpanBytes: dense)
                var bytes = [UInt8](repeating: 0, count: view.elementCount * 4)
                // Reads of odd sizes, not aligned to elements.
                var done = 0
                try bytes.withUnsafeMutableBytes { raw in
                    while done < raw.count {
                        let n = min(raw.count - done, 1 + Int(rng.next() % 13))
                        try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[done..<done + n]))
                        done += n
                    }
                }
                let got = bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                #expect(got == expected, "shape \(shape) strides \(strides) offset \(offset) chunk \(chunk) dense \(dense)")
            }
        }
    }

    // MARK: the zip reader

    /// A stored member described only through ZIP64 fields (sizes and offset 0xFFFFFFFF in the
    /// central directory, the ZIP64 end record and locator), as archives over 4 GB are written.
    @Test func zip64ArchivesAreRead() throws {
        let name = Array("a/data/0".utf8)
        let data: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        var file: [UInt8] = []
        // Local header with a 4-byte padding extra field before the data.
        file += Bytes.le(UInt32(0x0403_4B50)) + Bytes.le(UInt16(45)) + Bytes.le(UInt16(0)) + Bytes.le(UInt16(0))
        file += Bytes.le(UInt32(0)) + Bytes.le(UInt32(0)) + Bytes.le(UInt32(0xFFFF_FFFF)) + Bytes.le(UInt32(0xFFFF_FFFF))
        file += Bytes.le(UInt16(name.count)) + Bytes.le(UInt16(4)) + name + [0xFB, 0xFB, 0, 0] + data
        let directoryOffset = file.count
        var central: [UInt8] = Bytes.le(UInt32(0x0201_4B50)) + Bytes.le(UInt16(45)) + Bytes.le(UInt16(45))
        central += Bytes.le(UInt16(0)) + Bytes.le(UInt16(0)) + Bytes.le(UInt32(0)) + Bytes.le(UInt32(0))
        central += Bytes.le(UInt32(0xFFFF_FFFF)) + Bytes.le(UInt32(0xFFFF_FFFF))
        central += Bytes.le(UInt16(name.count)) + Bytes.le(UInt16(28)) + Bytes.le(UInt16(0)) + Bytes.le(UInt16(0))
        central += Bytes.le(UInt16(0)) + Bytes.le(UInt32(0)) + Bytes.le(UInt32(0xFFFF_FFFF)) + name
        central += Bytes.le(UInt16(1)) + Bytes.le(UInt16(24)) + Bytes.le(UInt64(8)) + Bytes.le(UInt64(8)) + Bytes.le(UInt64(0))
        file += central
        let recordOffset = file.count
        file += Bytes.le(UInt32(0x0606_4B50)) + Bytes.le(UInt64(44)) + Bytes.le(UInt16(45)) + Bytes.le(UInt16(45))
        file += Bytes.le(UInt32(0)) + Bytes.le(UInt32(0)) + Bytes.le(UInt64(1)) + Bytes.le(UInt64(1))
        file += Bytes.le(UInt64(central.count)) + Bytes.le(UInt64(directoryOffset))
        file += Bytes.le(UInt32(0x0706_4B50)) + Bytes.le(UInt32(0)) + Bytes.le(UInt64(recordOffset)) + Bytes.le(UInt32(1))
        file += Bytes.le(UInt32(0x0605_4B50)) + Bytes.le(UInt16(0xFFFF)) + Bytes.le(UInt16(0xFFFF)) + Bytes.le(UInt16(0xFFFF))
        file += Bytes.le(UInt16(0xFFFF)) + Bytes.le(UInt32(0xFFFF_FFFF)) + Bytes.le(UInt32(0xFFFF_FFFF)) + Bytes.le(UInt16(0))
        let path = try Bytes.temporaryFile(file)
        defer { Bytes.removeDirectory(of: path) }
        let zip = try StoredZip(try ReadableFile(path: path))
        #expect(zip.members.map(\.name) == ["a/data/0"])
        #expect(zip.members[0].size == 8)
        #expect(try zip.read(zip.members[0], limit: 100) == data)

        // The same archive with its ZIP64 record pointing past the file is refused.
        var broken = file
        let locator = file.count - 22 - 20
        broken.replaceSubrange(locator + 8..<locator + 16, with: Bytes.le(UInt64(1) << 40))
        let brokenPath = try Bytes.temporaryFile(broken)
        defer { Bytes.removeDirectory(of: brokenPath) }
        expectMalformed("ZIP64 end record is outside the file") { _ = try StoredZip(try ReadableFile(path: brokenPath)) }
    }
}
