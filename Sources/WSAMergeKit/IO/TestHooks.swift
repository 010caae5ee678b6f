#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Test-only pauses that make fault tests deterministic: `WSAMERGE_TEST_PAUSE=point:seconds`
/// sleeps once at `point` (`open`: after the headers are read, before any tensor data;
/// `write`: after the first tensor of an output is written, before the output is complete;
/// `sync`: after an output file is synced, before it is linked into place), and
/// `point:seconds:skip` passes the point `skip` times first. When `WSAMERGE_TEST_PAUSE_MARK`
/// names a path, that file is created as the pause begins and the pause lasts until the test
/// removes it (`seconds` is then only a time limit), so a test acts inside the pause whatever
/// the load. `link` is between linking a `--force` output under its hidden name and renaming it
/// into place. Without the variables these are no-ops; release builds have none of them (the
/// tests run the debug build).
enum TestHooks {
    #if DEBUG
    private static let request: (point: String, seconds: Double, skip: Int)? = {
        guard let raw = getenv("WSAMERGE_TEST_PAUSE") else { return nil }
        let parts = String(cString: raw).split(separator: ":")
        guard parts.count == 2 || parts.count == 3, let seconds = Double(parts[1]),
              let skip = parts.count == 3 ? Int(parts[2]) : 0 else { return nil }
        return (String(parts[0]), seconds, skip)
    }()
    private static let arrivals = Atomic<Int>(0)

    /// `WSAMERGE_TEST_NO_TMPFILE` set: outputs use named temporaries, as on file systems
    /// without `O_TMPFILE` (NFS, vfat).
    static let noTmpfile = getenv("WSAMERGE_TEST_NO_TMPFILE") != nil
    #else
    static let noTmpfile = false
    #endif

    static func pause(at point: String) {
        #if DEBUG
        guard let request, request.point == point else { return }
        guard arrivals.wrappingAdd(1, ordering: .relaxed).newValue == request.skip + 1 else { return }
        guard let mark = getenv("WSAMERGE_TEST_PAUSE_MARK") else {
            usleep(useconds_t(request.seconds * 1_000_000))
            return
        }
        close(open(mark, O_CREAT | O_WRONLY, 0o644))
        var waited = 0.0
        while access(mark, F_OK) == 0 && waited < request.seconds {
            usleep(10_000)
            waited += 0.01
        }
        #endif
    }
}
