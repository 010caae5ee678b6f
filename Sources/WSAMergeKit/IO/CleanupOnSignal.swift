import CKernels

/// What an interrupted run (SIGINT, SIGTERM, SIGHUP) removes before it dies: the paths it
/// created and has not yet handed over. The table lives in C (`linux_io.c`), where the handler
/// reads it with async-signal-safe calls only; `install()` sets the handlers up once, at start.
public enum CleanupOnSignal {
    public enum Action: Int32 {
        /// Rename the path back to its target (the backup of a file being replaced).
        case restore = 0
        /// Remove the file.
        case unlink = 1
        /// Remove the (empty) directory; runs after every file.
        case rmdir = 2
    }

    /// Installs the handlers, and ignores SIGPIPE and SIGXFSZ (writes then fail with EPIPE or
    /// EFBIG, which are reported, instead of killing the process).
    public static func install() { wsk_install_signal_handlers() }

    /// Registers `path`; returns the slot to `remove` once the path is no longer this run's to
    /// clean (-1 when the table is full: the path is then left as without a handler).
    @discardableResult
    static func add(_ action: Action, _ path: String, target: String? = nil) -> Int32 {
        if let target { return wsk_cleanup_add(action.rawValue, path, target) }
        return wsk_cleanup_add(action.rawValue, path, nil)
    }

    static func remove(_ slot: Int32) {
        if slot >= 0 { wsk_cleanup_remove(slot) }
    }
}
