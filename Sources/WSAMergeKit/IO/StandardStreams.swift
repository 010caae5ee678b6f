#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes to standard output and error by descriptor, every byte (a NUL included, where `fputs`
/// stops), with no stdio buffer and no global `FILE` (which Swift 6 treats as shared state).
public enum StandardStreams {
    public static let output: Int32 = 1
    public static let error: Int32 = 2

    /// Writes all of `text` to `descriptor`; returns 0, or the `errno` of the failed write.
    @discardableResult
    public static func write(_ text: String, to descriptor: Int32) -> Int32 {
        var text = text
        return text.withUTF8 { bytes -> Int32 in
            var done = 0
            while done < bytes.count {
                #if canImport(Glibc)
                let n = Glibc.write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                #else
                let n = Darwin.write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                #endif
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                done += n
            }
            return 0
        }
    }
}
