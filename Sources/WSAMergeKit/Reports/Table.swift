#if canImport(Glibc)
import Glibc
#endif

/// Aligned text columns for `--format table`: numbers right-aligned, text left-aligned, long
/// names shortened in the middle.
public struct Table {
    public var headers: [String]
    public var rows: [[String]] = []
    /// Columns whose cells are right-aligned.
    public var numericColumns: Set<Int>
    public static let maxNameWidth = 60

    public init(headers: [String], numericColumns: Set<Int>) {
        self.headers = headers
        self.numericColumns = numericColumns
    }

    /// Adds a row; control characters in its cells are escaped (see `escapeControlCharacters`).
    public mutating func add(_ row: [String]) { rows.append(row.map(escapeControlCharacters)) }

    public var text: String {
        var widths = headers.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                return numericColumns.contains(i) ? pad + cell : (i == cells.count - 1 ? cell : cell + pad)
            }.joined(separator: "  ")
        }
        return ([line(headers)] + rows.map(line)).joined(separator: "\n") + "\n"
    }
}

/// `text` with every character that could end a line, erase or forge output, or drive a
/// terminal shown as an escape instead: C0 controls (NUL, newline, ESC, …), DEL, C1 controls,
/// the line and paragraph separators and the bidirectional overrides become `\0`, `\n`, `\t`,
/// `\r` or `\xNN` / `\u{NNNN}`. Used for names in tables and in messages (JSON escapes them itself).
public func escapeControlCharacters(_ text: String) -> String {
    func unsafe(_ v: UInt32) -> Bool {
        v < 0x20 || (0x7F...0x9F).contains(v) || v == 0x2028 || v == 0x2029 || (0x202A...0x202E).contains(v)
            || (0x2066...0x2069).contains(v) || v == 0x200E || v == 0x200F || v == 0x061C
    }
    guard text.unicodeScalars.contains(where: { unsafe($0.value) }) else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
        let v = scalar.value
        guard unsafe(v) else { out.unicodeScalars.append(scalar); continue }
        switch v {
        case 0: out += "\\0"
        case 0x0A: out += "\\n"
        case 0x09: out += "\\t"
        case 0x0D: out += "\\r"
        case ..<0x100:
            let hex = String(v, radix: 16)
            out += "\\x" + (hex.count < 2 ? "0" : "") + hex
        default: out += "\\u{" + String(v, radix: 16) + "}"
        }
    }
    return out
}

/// `name` shortened to `width` characters with `…` in the middle.
public func shortenMiddle(_ name: String, width: Int = Table.maxNameWidth) -> String {
    guard name.count > width, width > 3 else { return name }
    let keep = width - 1
    let head = name.prefix(keep / 2)
    let tail = name.suffix(keep - keep / 2)
    return head + "…" + tail
}

/// A number for people: `3.4e-05`, `0.0201`, `1.23e+06`; `-` for none, and for NaN and the
/// infinities, which the JSON writes as `null` too (a table shows `-` where the JSON has `null`).
public func formatNumber(_ value: Double?) -> String {
    guard let value, value.isFinite else { return "-" }
    if value == 0 { return "0" }
    let magnitude = value.magnitude
    if magnitude >= 1e-3 && magnitude < 1e5 {
        let decade = Int((log10(magnitude)).rounded(.down))
        let text = formatDecimal(value, digits: min(max(0, 3 - decade), 6))
        // 0.99996 rounds to 1.0000: four significant digits are 1.000
        if let shown = Double(text), shown.magnitude >= pow(10, Double(decade + 1)) {
            return formatDecimal(value, digits: min(max(0, 2 - decade), 6))
        }
        return text
    }
    var exponent = Int(log10(magnitude).rounded(.down))
    // 10^exponent below about 1e-307 is subnormal and inexact: divide in two steps
    var mantissa = exponent < -300 ? value * 1e300 / pow(10, Double(exponent + 300)) : value / pow(10, Double(exponent))
    if mantissa.magnitude >= 10 { exponent += 1; mantissa /= 10 }
    if mantissa.magnitude < 1 { exponent -= 1; mantissa *= 10 }
    if formatDecimal(mantissa.magnitude, digits: 2) == "10.00" { exponent += 1; mantissa /= 10 }
    let sign = exponent < 0 ? "-" : "+"
    let e = String(abs(exponent))
    return formatDecimal(mantissa, digits: 2) + "e" + sign + (e.count < 2 ? "0" + e : e)
}
