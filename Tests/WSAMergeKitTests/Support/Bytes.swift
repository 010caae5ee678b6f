import Foundation
import Testing
@testable import WSAMergeKit

/// Byte builders and file helpers for the library's unit tests.
enum Bytes {
    /// Little-endian bytes of `value`.
    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    static func le(_ value: Double) -> [UInt8] { le(value.bitPattern) }
    static func le(_ value: Float) -> [UInt8] { le(value.bitPattern) }

    /// A `.safetensors` file: the 8-byte length, `header` as UTF-8, then `data`.
    static func safetensors(_ header: String, data: [UInt8] = []) -> [UInt8] {
        let json = Array(header.utf8)
        return le(UInt64(json.count)) + json + data
    }

    /// A `.npy` file with header dict `dict` (padded as numpy does) and `data`.
    static func npy(_ dict: String, data: [UInt8] = [], major: UInt8 = 1, minor: UInt8 = 0) -> [UInt8] {
        var text = Array(dict.utf8)
        let prefix = major == 1 ? 10 : 12
        while (prefix + text.count + 1) % 64 != 0 { text.append(0x20) }
        text.append(0x0A)
        let length = major == 1 ? le(UInt16(text.count)) : le(UInt32(text.count))
        return NpyHeader.magic + [major, minor] + length + text + data
    }

    /// Writes `bytes` to a new file in a fresh temporary directory and returns its path.
    static func temporaryFile(_ bytes: [UInt8], name: String = "file.bin") throws -> String {
        let directory = NSTemporaryDirectory() + "wsamerge-unit-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func removeDirectory(of path: String) {
        try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent)
    }
}

/// Expects `body` to throw `.malformed` (exit 65) whose text contains every one of `mentions`.
func expectMalformed(_ mentions: String..., sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected a malformed-input error mentioning \(mentions)", sourceLocation: sourceLocation)
    } catch let error as WSAMergeError {
        #expect(error.exitCode == 65, "\(error)", sourceLocation: sourceLocation)
        for text in mentions {
            #expect(error.description.contains(text), "'\(error)' should mention '\(text)'", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
    }
}

/// |a − b| ≤ rel·|b| (exact when b is 0).
func close(_ a: Double, _ b: Double, rel: Double) -> Bool {
    if a.isNaN || b.isNaN { return a.isNaN && b.isNaN }
    if a == b { return true }
    return (a - b).magnitude <= rel * b.magnitude
}
