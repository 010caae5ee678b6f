/// Parses `5GB`, `500MB`, `1.5GB`, `10kB` or a plain byte count (powers of 1000; `KiB`-style
/// binary units are powers of 1024).
public func parseSize(_ text: String) throws -> Int {
    let upper = text.filter { $0 != " " }.uppercased()
    let units: [(String, Double)] = [
        ("KIB", 1024), ("MIB", 1_048_576), ("GIB", 1_073_741_824), ("TIB", 1_099_511_627_776),
        ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1),
    ]
    let invalid = WSAMergeError.usage("invalid size '\(text)' (use e.g. 5GB, 500MB or a byte count)")
    for (suffix, scale) in units where upper.hasSuffix(suffix) {
        guard let value = Double(upper.dropLast(suffix.count)), value > 0, value * scale < 9e18, value * scale >= 1 else { throw invalid }
        return Int(value * scale)
    }
    guard let bytes = Int(upper), bytes > 0 else { throw invalid }
    return bytes
}
