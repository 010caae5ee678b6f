import Foundation
import Synchronization

/// Python snippets run in long-lived worker processes of the project's Python instead of a new
/// interpreter each: importing numpy and ml_dtypes costs about 0.2 s of CPU, and the suite runs
/// Python well over a hundred times. Each worker runs one snippet at a time, in a fresh module
/// namespace as `python -c` would (`sys.argv`, the working directory and `sys.path` restored
/// after it), with its stdout and stderr captured and its exit status from `SystemExit` or an
/// uncaught exception (1, traceback on stderr). A test that needs a process of its own (signals,
/// resource limits) runs the interpreter itself.
final class PythonWorkers: Sendable {
    static let shared = PythonWorkers()

    private let idle = Mutex<[Worker]>([])

    /// Runs `script` (or, with `file`, that script file) with `arguments` as `sys.argv[1:]`.
    func run(script: String, file: String? = nil, arguments: [String]) throws -> TestSupport.Result {
        let worker = try idle.withLock { $0.popLast() } ?? Worker()
        let request: [String: Any] = ["script": script, "file": file ?? NSNull(), "argv": arguments]
        guard let reply = try worker.call(JSONSerialization.data(withJSONObject: request)),
              let object = try? JSONSerialization.jsonObject(with: reply) as? [String: Any],
              let status = object["status"] as? Int, let stdout = object["stdout"] as? String,
              let stderr = object["stderr"] as? String else {
            // A worker that died or answered garbage is not reused.
            return TestSupport.Result(status: -1, stdout: "", stderr: "the Python worker stopped (\(worker.exitDescription))")
        }
        idle.withLock { $0.append(worker) }
        return TestSupport.Result(status: Int32(status), stdout: stdout, stderr: stderr)
    }

    /// One interpreter serving requests on its stdin and stdout, each a 4-byte little-endian
    /// length and that many bytes of JSON.
    private final class Worker: @unchecked Sendable {
        // @unchecked: a worker is used by one caller at a time (taken out of `idle` for the call).
        let process = Process()
        let requests = Pipe(), replies = Pipe()

        init() throws {
            process.executableURL = URL(fileURLWithPath: TestSupport.python)
            process.arguments = ["-c", PythonWorkers.serve]
            process.standardInput = requests
            process.standardOutput = replies
            process.standardError = FileHandle.nullDevice
            try process.run()
        }

        /// Sends `request` and returns the reply, or nil when the worker is gone.
        func call(_ request: Data) throws -> Data? {
            var length = UInt32(request.count).littleEndian
            do {
                try requests.fileHandleForWriting.write(contentsOf: Data(bytes: &length, count: 4) + request)
            } catch {
                return nil
            }
            guard let head = read(4) else { return nil }
            let count = head.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            return read(count)
        }

        /// Exactly `count` bytes from the worker, or nil at its end.
        private func read(_ count: Int) -> Data? {
            var data = Data()
            while data.count < count {
                guard let part = try? replies.fileHandleForReading.read(upToCount: count - data.count), !part.isEmpty else {
                    return nil
                }
                data += part
            }
            return data
        }

        var exitDescription: String {
            process.isRunning ? "bad reply" : "exit \(process.terminationStatus)"
        }
    }

    /// The worker's program: numpy and ml_dtypes imported once, then one request after another.
    /// Its own stdin and stdout carry the requests; the descriptors 0 and 1 that children of a
    /// snippet inherit are /dev/null and the worker's stderr.
    static let serve = #"""
    import io, json, os, struct, sys, traceback
    import numpy, ml_dtypes
    channel_in = os.fdopen(os.dup(0), "rb", buffering=0)
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)

    def exactly(n):
        data = b""
        while len(data) < n:
            part = channel_in.read(n - len(data))
            if not part:
                sys.exit(0)
            data += part
        return data

    while True:
        request = json.loads(exactly(struct.unpack("<I", exactly(4))[0]))
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
        err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
        saved = (sys.stdout, sys.stderr, sys.argv, list(sys.path), os.getcwd())
        sys.stdout, sys.stderr = out, err
        path = request["file"]
        sys.argv = [path or "-c"] + request["argv"]
        if path:
            sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        status = 0
        try:
            source = open(path).read() if path else request["script"]
            scope = {"__name__": "__main__", "__builtins__": __builtins__}
            if path:
                scope["__file__"] = path
            exec(compile(source, path or "<string>", "exec"), scope)
        except SystemExit as e:
            if e.code is None:
                status = 0
            elif isinstance(e.code, int):
                status = e.code
            else:
                print(e.code, file=sys.stderr)
                status = 1
        except BaseException:
            traceback.print_exc()
            status = 1
        for stream in (out, err):
            stream.flush()
        sys.stdout, sys.stderr, sys.argv, sys.path[:] = saved[0], saved[1], saved[2], saved[3]
        os.chdir(saved[4])
        reply = json.dumps({"status": status & 0xFF,
                            "stdout": out.buffer.getvalue().decode("utf-8", "replace"),
                            "stderr": err.buffer.getvalue().decode("utf-8", "replace")}).encode()
        channel_out.write(struct.pack("<I", len(reply)) + reply)
    """#
}
