#if canImport(Glibc)
import Glibc
#endif

/// Test-only pauses that make fault tests deterministic: `WSAMERGE_TEST_PAUSE=point:seconds`
/// sleeps once at `point` (`open`: after the headers are read, before any tensor data;
/// `write`: after the first tensor of an output is written, before the output is complete).
/// Without the variable these are no-ops.
enum TestHooks {
    private static let request: (point: String, seconds: Double)? = {
        guard let raw = getenv("WSAMERGE_TEST_PAUSE") else { return nil }
        let parts = String(cString: raw).split(separator: ":")
        guard parts.count == 2, let seconds = Double(parts[1]) else { return nil }
        return (String(parts[0]), seconds)
    }()
    private nonisolated(unsafe) static var done = false

    static func pause(at point: String) {
        guard let request, request.point == point, !done else { return }
        done = true
        usleep(useconds_t(request.seconds * 1_000_000))
    }
}
