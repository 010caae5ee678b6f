#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// One progress line on stderr, redrawn in place: tensors done / total, bytes, rate, ETA.
/// Shown only when stderr is a terminal, `TERM` is not `dumb` and `--quiet` was not given.
public final class Progress: Sendable {
    private struct State {
        var totalTensors = 0
        var totalBytes = 0
        var doneTensors = 0
        var doneBytes = 0
        var started = 0.0
        var lastDraw = 0.0
    }

    private let state = Mutex(State())
    private let label: String

    /// A progress line for `label`, or `nil` when it should not be shown.
    public static func forTerminal(label: String, quiet: Bool) -> Progress? {
        guard !quiet, StandardError.isInteractive else { return nil }
        return Progress(label: label)
    }

    init(label: String) { self.label = label }

    func start(tensors: Int, bytes: Int) {
        let t = now()
        state.withLock { state in
            state.totalTensors = tensors
            state.totalBytes = bytes
            state.started = t
        }
    }

    /// Counts a finished tensor; safe to call from any thread.
    func tensorDone(bytes: Int) {
        let t = now()
        let line: String? = state.withLock { state in
            state.doneTensors += 1
            state.doneBytes += bytes
            guard t - state.lastDraw >= 0.1 || state.doneTensors == state.totalTensors else { return nil }
            state.lastDraw = t
            return describe(state, elapsed: t - state.started)
        }
        if let line { StandardStreams.write("\r\u{1B}[K" + line, to: StandardStreams.error) }
    }

    func finish() {
        StandardStreams.write("\r\u{1B}[K", to: StandardStreams.error)
    }

    private func describe(_ state: State, elapsed: Double) -> String {
        let rate = elapsed > 0 ? Double(state.doneBytes) / elapsed : 0
        let eta = rate > 0 ? Double(state.totalBytes - state.doneBytes) / rate : 0
        return "\(label): \(state.doneTensors)/\(state.totalTensors) tensors, \(formatBytes(state.doneBytes)) of \(formatBytes(state.totalBytes)), "
            + "\(formatBytes(Int(rate)))/s, ETA \(Int(eta.rounded()))s"
    }

    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// What stderr is connected to.
public enum StandardError {
    /// A terminal that can redraw lines: a tty whose `TERM` is not `dumb`.
    public static let isInteractive: Bool = {
        guard isatty(2) == 1 else { return false }
        if let term = getenv("TERM"), String(cString: term) == "dumb" { return false }
        return true
    }()

    /// Colour is on for an interactive stderr unless `NO_COLOR` is set.
    public static let colour: Bool = isInteractive && getenv("NO_COLOR") == nil
}

/// `1.2 GB`-style sizes (powers of 1000).
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1000 && unit < units.count - 1 {
        value /= 1000
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : formatDecimal(value, digits: value < 10 ? 2 : (value < 100 ? 1 : 0)) + " " + units[unit]
}

/// `value` with exactly `digits` decimals.
func formatDecimal(_ value: Double, digits: Int) -> String {
    var scaled = (value * pow10(digits)).rounded()
    let negative = scaled < 0
    scaled = scaled.magnitude
    var text = String(Int(scaled))
    if digits > 0 {
        while text.count <= digits { text = "0" + text }
        text.insert(".", at: text.index(text.endIndex, offsetBy: -digits))
    }
    return (negative ? "-" : "") + text
}

private func pow10(_ n: Int) -> Double { (0..<n).reduce(1.0) { r, _ in r * 10 } }
