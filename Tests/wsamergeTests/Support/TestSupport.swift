import Foundation
import Testing

/// Helpers for end-to-end tests: run the built `wsamerge` binary and the project's Python
/// (numpy + safetensors, from the virtual environment `make test` installs).
enum TestSupport {
    /// The package root (two levels above this file's folder).
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }
        return url.path
    }()

    static let fixtures = root + "/fixtures"

    /// The binary under test: `WSAMERGE_BIN`, else the debug build `swift test` just made.
    static let binary: String = ProcessInfo.processInfo.environment["WSAMERGE_BIN"] ?? root + "/.build/debug/wsamerge"

    /// Whether the binary under test is built with AddressSanitizer (`make asan` says so), whose
    /// memory use says nothing of wsamerge's.
    static let sanitizedBinary = ProcessInfo.processInfo.environment["WSAMERGE_TEST_SANITIZED"] == "1"

    /// The Python with numpy, safetensors and ml_dtypes: `WSAMERGE_PYTHON`, else `.venv`.
    static let python: String = ProcessInfo.processInfo.environment["WSAMERGE_PYTHON"] ?? root + "/.venv/bin/python"

    /// Whether the Python of the tests (numpy, safetensors, ml_dtypes) is there.
    static let hasPython: Bool = FileManager.default.isExecutableFile(atPath: python)

    /// Whether `command` is on the PATH.
    static func hasCommand(_ command: String) -> Bool {
        (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/\(command)")
        }
    }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String

        /// stdout parsed as one JSON document.
        func json() throws -> Any { try JSONSerialization.jsonObject(with: Data(stdout.utf8), options: [.fragmentsAllowed]) }
        /// Each non-empty stdout line parsed as a JSON document.
        func jsonLines() throws -> [Any] {
            try stdout.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) }
        }
    }

    /// Runs `executable` with `arguments`, returning its exit status and output.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                    stdin: String? = nil, directory: String? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.arguments = arguments
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        if let stdin {
            let input = Pipe()
            process.standardInput = input
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        try process.run()
        // Read both pipes concurrently so a full pipe never blocks the child.
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errBox.data = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        let errData = errBox.data
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Runs `wsamerge` with `arguments`.
    @discardableResult
    static func wsamerge(_ arguments: [String], environment: [String: String]? = nil) throws -> Result {
        try run(binary, arguments, environment: environment)
    }

    /// Runs a Python snippet with the project's Python (in a worker, `PythonWorkers`); `arguments`
    /// become `sys.argv[1:]`.
    @discardableResult
    static func python(_ script: String, _ arguments: [String] = []) throws -> Result {
        try inPythonWorker(script: script, file: nil, arguments: arguments)
    }

    /// Runs the Python script file at `path` as `python path arguments…` would.
    @discardableResult
    static func pythonFile(_ path: String, _ arguments: [String] = []) throws -> Result {
        try inPythonWorker(script: "", file: path, arguments: arguments)
    }

    private static func inPythonWorker(script: String, file: String?, arguments: [String]) throws -> Result {
        guard hasPython else {
            Issue.record("no Python environment at \(python): run the suite with `make test`")
            return Result(status: -1, stdout: "", stderr: "")
        }
        return try PythonWorkers.shared.run(script: script, file: file, arguments: arguments)
    }

    /// A fresh empty directory, removed by the caller's `defer`.
    static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "wsamerge-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func remove(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

    static func fileExists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    /// The size of the file at `path`, or nil when there is none.
    static func fileSize(_ path: String) -> Int? {
        (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue
    }

    /// Asserts a clean refusal: the exit code, one `wsamerge: error:` line naming `mentions`.
    static func expectRefusal(_ result: Result, code: Int32, mentions: [String] = [],
                              sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == code, "exit \(result.status), stderr: \(result.stderr)", sourceLocation: sourceLocation)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr should be one line: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.hasPrefix("wsamerge: error: "), "stderr: \(result.stderr)", sourceLocation: sourceLocation)
        for text in mentions {
            #expect(result.stderr.contains(text), "stderr should mention '\(text)': \(result.stderr)", sourceLocation: sourceLocation)
        }
    }
}
