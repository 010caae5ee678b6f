import Foundation
import Testing
@testable import WSAMergeKit

/// `OutputFile`: nothing is visible at the destination before `commit()`, an uncommitted file
/// leaves nothing behind, and the destination checks refuse what they must.
@Suite struct OutputFileTests {
    func directory() throws -> String {
        let path = NSTemporaryDirectory() + "wsamerge-output-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func appearsOnlyOnCommit() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/out.bin"
        let file = try OutputFile(destination: path, force: false, inputs: [])
        try file.write(Array(repeating: 7, count: 3 << 20))  // larger than the buffer
        try file.write("tail")
        try file.patch([1, 2], at: 0)
        #expect(!FileManager.default.fileExists(atPath: path))
        try file.commit()
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(bytes.count == (3 << 20) + 4)
        #expect(Array(bytes.prefix(3)) == [1, 2, 7])
        #expect(String(decoding: bytes.suffix(4), as: UTF8.self) == "tail")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["out.bin"])
    }

    /// Writes of every size, crossing the 2 MiB blocks the background thread writes, patches in
    /// blocks already written and in the block being filled, and a length that is no multiple of
    /// the device block: the file holds exactly the bytes, with direct I/O and without.
    @Test(arguments: [true, false])
    func streamsAcrossBlocksAndPatchesAnywhere(directIO: Bool) throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/out.bin"
        let file = try OutputFile(destination: path, force: false, inputs: [], directIO: directIO)
        var expected: [UInt8] = []
        var rng = SplitMix(seed: 3)
        for size in [1, 4095, 4097, 700_000, 2 << 20, 13, (2 << 20) - 9, 3_000_001, 5] {
            let bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            try file.write(bytes)
            expected += bytes
        }
        #expect(file.offset == expected.count)
        // In the first block, across the first two, across the last written one and the one being
        // filled (which starts at 6 MiB), and in the one being filled.
        #expect(expected.count > 6 << 20 && expected.count < 8 << 20)
        for (position, patch) in [(0, [UInt8](repeating: 0xAB, count: 9)), ((2 << 20) - 3, [1, 2, 3, 4, 5, 6]),
                                  ((6 << 20) - 2, [11, 12, 13, 14, 15]), (expected.count - 4, [9, 9, 9])] {
            try file.patch(patch, at: position)
            expected.replaceSubrange(position..<position + patch.count, with: patch)
        }
        try file.commit()
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == expected)
    }

    /// Dropping an output while its background thread still writes a block waits for the write
    /// (the thread holds no reference to the output, so `deinit` never runs on it) and leaves
    /// nothing behind.
    @Test func droppingAnOutputWithWritesInFlight() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for _ in 0..<5 {
            let file = try OutputFile(destination: dir + "/out.bin", force: false, inputs: [])
            try file.write([UInt8](repeating: 1, count: (2 << 20) + 5))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test func abandonedOutputLeavesNothing() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let file = try OutputFile(destination: dir + "/out.bin", force: false, inputs: [])
            try file.write("partial")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test func forceReplacesOnlyAtCommit() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/out.bin"
        try Data("old".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: WSAMergeError.self) { try OutputFile(destination: path, force: false, inputs: []) }
        let file = try OutputFile(destination: path, force: true, inputs: [])
        try file.write("new")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "old")
        try file.commit()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "new")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["out.bin"])
    }

    @Test func refusesInputsDirectoriesAndMissingParents() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let input = dir + "/in.bin"
        try Data("x".utf8).write(to: URL(fileURLWithPath: input))
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.bin", withDestinationPath: input)
        let identity = try #require(FileIdentity(path: input))
        for (path, force) in [(input, true), (dir + "/link.bin", true), (dir, true), (dir + "/missing/out.bin", false)] {
            #expect(throws: WSAMergeError.self) { try OutputFile.precheck(path, force: force, inputs: [identity]) }
        }
        do {
            try OutputFile.precheck(input, force: true, inputs: [identity])
        } catch let error as WSAMergeError {
            #expect(error.exitCode == 73)
            #expect(error.description.contains("one of the inputs"))
        }
    }
}
