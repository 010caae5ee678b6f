/// A figure of small panels drawn as a self-contained SVG document: plain series in, text out.
/// Nothing here measures anything; `Figures` turns reports into series.
///
/// The SVG holds no script, no link and no external font (the generic `sans-serif` family), so
/// it opens in any browser and embeds in a README. Structure, for tools and tests:
/// - each panel is a `<g class="panel">` whose `data-title` is the panel's title;
/// - in a `lines` panel, each series is one `<path class="series">` (`class="target"` for the
///   dashed target) with one coordinate pair per point, `M` starting each run of points, plus a
///   `<circle>` marker per point;
/// - in a `points` panel, each series is one `<g class="series">` (`class="target"`) holding a
///   `<circle>` per point (a short dash per point for the target);
/// - each series element carries `data-series` (its index in the panel and the legend: every
///   panel lists the same series in the same order) and `data-label`.
public struct Plot: Sendable {
    public enum PanelKind: Sendable { case lines, points }

    public struct Series: Sendable {
        public var label: String
        /// Dashed and black: the target the models are compared with.
        public var isTarget: Bool
        /// y at each x; `nil` leaves a gap.
        public var points: [(x: Double, y: Double?)]

        public init(label: String, isTarget: Bool = false, points: [(x: Double, y: Double?)]) {
            self.label = label
            self.isTarget = isTarget
            self.points = points
        }
    }

    public struct Panel: Sendable {
        public var title: String
        public var kind: PanelKind
        public var xLabel: String
        /// Tick labels of a `points` panel (x = 0, 1, …); a `lines` panel labels its integer x.
        public var categories: [String]
        public var series: [Series]

        public init(title: String, kind: PanelKind, xLabel: String, categories: [String] = [], series: [Series]) {
            self.title = title
            self.kind = kind
            self.xLabel = xLabel
            self.categories = categories
            self.series = series
        }
    }

    public var title: String
    public var yLabel: String
    public var panels: [Panel]

    public init(title: String, yLabel: String, panels: [Panel]) {
        self.title = title
        self.yLabel = yLabel
        self.panels = panels
    }

    /// Okabe & Ito's colour-blind-safe palette (yellow left out: too pale on white); black is the target's.
    public static let palette = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#7F7F7F"]
    static let targetColour = "#000000"

    // Layout, in px.
    static let panelWidth = 440.0
    static let panelHeight = 250.0
    static let margin = (left: 64.0, right: 16.0, top: 28.0, bottom: 40.0)
    static let categoryBand = 90.0
    static let columns = 2

    /// The SVG document.
    public var svg: String {
        // Every panel lists the same series in the same order; the legend is the fullest panel's.
        let legendEntries = (panels.max { $0.series.count < $1.series.count }?.series ?? []).map { (label: $0.label, isTarget: $0.isTarget) }

        let width = Double(Self.columns) * Self.panelWidth + 20
        // Legend: rows of entries 210 px wide.
        let perRow = Swift.max(1, Int((width - 20) / 210))
        let legendRows = (legendEntries.count + perRow - 1) / perRow
        let top = 36 + Double(legendRows) * 20 + 8
        var heights: [Double] = []
        for panel in panels { heights.append(Self.panelHeight + (panel.kind == .points ? Self.categoryBand : 0)) }
        // Panels fill rows of `columns`; a points panel gets a row of its own, full width.
        var placed: [(x: Double, y: Double, width: Double, height: Double)] = []
        var y = top, column = 0, rowHeight = 0.0
        for (k, panel) in panels.enumerated() {
            let full = panel.kind == .points
            if column > 0 && (full || column == Self.columns) {
                y += rowHeight
                column = 0
                rowHeight = 0
            }
            let w = full ? Double(Self.columns) * Self.panelWidth : Self.panelWidth
            placed.append((10 + Double(column) * Self.panelWidth, y, w, heights[k]))
            rowHeight = Swift.max(rowHeight, heights[k])
            column = full ? Self.columns : column + 1
        }
        let height = (y + rowHeight + 10).rounded(.up)

        var out = SVGText()
        out.line(##"<svg xmlns="http://www.w3.org/2000/svg" width="\##(num(width))" height="\##(num(height))" viewBox="0 0 \##(num(width)) \##(num(height))" font-family="sans-serif" font-size="12">"##)
        out.line(##"<title>\##(escape(title))</title>"##)
        out.line(##"<rect width="100%" height="100%" fill="#FFFFFF"/>"##)
        out.line(##"<text x="10" y="22" font-size="15" font-weight="bold">\##(escape(title))</text>"##)
        out.line(##"<g class="legend">"##)
        for (i, entry) in legendEntries.enumerated() {
            let lx = 10 + Double(i % perRow) * 210, ly = 36 + Double(i / perRow) * 20
            let stroke = entry.isTarget ? Self.targetColour : Self.palette[i % Self.palette.count]
            let dash = entry.isTarget ? ##" stroke-dasharray="6 4""## : ""
            out.line(##"<line x1="\##(num(lx))" y1="\##(num(ly + 6))" x2="\##(num(lx + 24))" y2="\##(num(ly + 6))" stroke="\##(stroke)" stroke-width="2.5"\##(dash)/>"##)
            if !entry.isTarget { out.line(##"<circle cx="\##(num(lx + 12))" cy="\##(num(ly + 6))" r="3" fill="\##(stroke)"/>"##) }
            out.line(##"<text x="\##(num(lx + 30))" y="\##(num(ly + 10))">\##(escape(shortenMiddle(entry.label, width: 28)))</text>"##)
        }
        out.line("</g>")
        for (panel, frame) in zip(panels, placed) {
            draw(panel, frame: frame, into: &out)
        }
        out.line("</svg>")
        return out.text
    }

    private func draw(_ panel: Panel, frame: (x: Double, y: Double, width: Double, height: Double), into out: inout SVGText) {
        let m = Self.margin
        let band = panel.kind == .points ? Self.categoryBand : 0
        let left = frame.x + m.left, right = frame.x + frame.width - m.right
        let top = frame.y + m.top, bottom = frame.y + frame.height - m.bottom - band
        let xs = panel.kind == .points ? panel.categories.indices.map(Double.init) : panel.series.flatMap { $0.points.map(\.x) }
        let ys = panel.series.flatMap { $0.points.compactMap(\.y) }.filter(\.isFinite)
        var (x0, x1) = (xs.min() ?? 0, xs.max() ?? 1)
        if panel.kind == .points || x0 == x1 { (x0, x1) = (x0 - 0.5, x1 + 0.5) }
        let yTicks = Ticks(ys.min() ?? 0, ys.max() ?? 1)
        let (y0, y1) = (yTicks.low, yTicks.high)
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * (right - left) }
        func py(_ y: Double) -> Double { bottom - (y - y0) / (y1 - y0) * (bottom - top) }

        out.line(##"<g class="panel" data-title="\##(escape(panel.title))">"##)
        out.line(##"<text x="\##(num(left))" y="\##(num(frame.y + 18))" font-weight="bold">\##(escape(shortenMiddle(panel.title, width: Int(frame.width / 7.2))))</text>"##)
        // Grid and y ticks.
        for tick in yTicks.values {
            let y = py(tick)
            out.line(##"<line x1="\##(num(left))" y1="\##(num(y))" x2="\##(num(right))" y2="\##(num(y))" stroke="#E0E0E0"/>"##)
            out.line(##"<text x="\##(num(left - 6))" y="\##(num(y + 4))" text-anchor="end">\##(escape(yTicks.label(tick)))</text>"##)
        }
        // x ticks: integers (layers) or categories.
        if panel.kind == .points {
            for (i, name) in panel.categories.enumerated() {
                let x = px(Double(i))
                out.line(##"<line x1="\##(num(x))" y1="\##(num(bottom))" x2="\##(num(x))" y2="\##(num(bottom + 4))" stroke="#333333"/>"##)
                out.line(##"<text x="\##(num(x))" y="\##(num(bottom + 14))" text-anchor="end" transform="rotate(-30 \##(num(x)) \##(num(bottom + 14)))">\##(escape(shortenMiddle(name, width: 24)))</text>"##)
            }
        } else {
            let step = Swift.max(1, Ticks.niceStep((x1 - x0) / 8).rounded(.up))
            var x = (x0 / step).rounded(.up) * step
            while x <= x1 {
                let p = px(x)
                out.line(##"<line x1="\##(num(p))" y1="\##(num(bottom))" x2="\##(num(p))" y2="\##(num(bottom + 4))" stroke="#333333"/>"##)
                out.line(##"<text x="\##(num(p))" y="\##(num(bottom + 17))" text-anchor="middle">\##(Int(x))</text>"##)
                x += step
            }
        }
        out.line(##"<rect x="\##(num(left))" y="\##(num(top))" width="\##(num(right - left))" height="\##(num(bottom - top))" fill="none" stroke="#333333"/>"##)
        out.line(##"<text x="\##(num((left + right) / 2))" y="\##(num(frame.y + frame.height - 8))" text-anchor="middle">\##(escape(panel.xLabel))</text>"##)
        let yMid = (top + bottom) / 2, yAt = frame.x + 14
        out.line(##"<text x="\##(num(yAt))" y="\##(num(yMid))" text-anchor="middle" transform="rotate(-90 \##(num(yAt)) \##(num(yMid)))">\##(escape(yLabel))</text>"##)

        for (index, series) in panel.series.enumerated() {
            let c = series.isTarget ? Self.targetColour : Self.palette[index % Self.palette.count]
            let attributes = ##"data-series="\##(index)" data-label="\##(escape(series.label))""##
            let points = series.points.compactMap { p in p.y.flatMap { $0.isFinite ? (px(p.x), py($0)) : nil } }
            switch panel.kind {
            case .lines:
                var d = "", pen = false
                for p in series.points {
                    guard let v = p.y, v.isFinite else { pen = false; continue }
                    d += (d.isEmpty ? "" : " ") + (pen ? "L" : "M") + "\(num(px(p.x))) \(num(py(v)))"
                    pen = true
                }
                let dash = series.isTarget ? ##" stroke-dasharray="6 4""## : ""
                out.line(##"<path class="\##(series.isTarget ? "target" : "series")" \##(attributes) d="\##(d)" fill="none" stroke="\##(c)" stroke-width="2"\##(dash)/>"##)
                if !series.isTarget {
                    for (x, y) in points { out.line(##"<circle cx="\##(num(x))" cy="\##(num(y))" r="2.5" fill="\##(c)"/>"##) }
                }
            case .points:
                out.line(##"<g class="\##(series.isTarget ? "target" : "series")" \##(attributes)>"##)
                // Series side by side around each category, so equal values stay visible.
                let spread = Swift.min(8.0, (right - left) / Double(Swift.max(1, panel.categories.count)) / Double(panel.series.count + 1))
                let shift = (Double(index) - Double(panel.series.count - 1) / 2) * spread
                for (x, y) in points.map({ (series.isTarget ? $0.0 : $0.0 + shift, $0.1) }) {
                    if series.isTarget {
                        out.line(##"<line x1="\##(num(x - 9))" y1="\##(num(y))" x2="\##(num(x + 9))" y2="\##(num(y))" stroke="\##(c)" stroke-width="2" stroke-dasharray="3 2"/>"##)
                    } else {
                        out.line(##"<circle cx="\##(num(x))" cy="\##(num(y))" r="4" fill="\##(c)" fill-opacity="0.85"/>"##)
                    }
                }
                out.line("</g>")
            }
        }
        out.line("</g>")
    }
}

/// Lines of SVG text.
struct SVGText {
    var text = ""
    mutating func line(_ s: String) { text += s + "\n" }
}

/// Axis ticks at 1, 2 or 5 × 10ⁿ, about five over the data's range, and their labels.
struct Ticks {
    let low: Double
    let high: Double
    let step: Double
    let values: [Double]

    init(_ minimum: Double, _ maximum: Double) {
        var lo = minimum, hi = maximum
        if lo == hi {
            let pad = lo == 0 ? 1 : lo.magnitude * 0.1
            lo -= pad
            hi += pad
        } else {
            // A little room, so no point sits on the frame (none below 0 for values ≥ 0).
            let pad = (hi - lo) * 0.04
            lo = lo >= 0 ? Swift.max(0, lo - pad) : lo - pad
            hi += pad
        }
        let step = Ticks.niceStep((hi - lo) / 5)
        low = (lo / step).rounded(.down) * step
        high = (hi / step).rounded(.up) * step
        self.step = step
        var values: [Double] = []
        var k = (low / step).rounded()
        while k * step <= high + step * 1e-9 {
            values.append(k * step)
            k += 1
        }
        self.values = values
    }

    /// The nearest of 1, 2, 5 × 10ⁿ at or above `raw`.
    static func niceStep(_ raw: Double) -> Double {
        guard raw > 0, raw.isFinite else { return 1 }
        var scale = 1.0
        while scale * 10 <= raw { scale *= 10 }
        while scale > raw { scale /= 10 }
        for factor in [1.0, 2, 5, 10] where factor * scale >= raw * (1 - 1e-12) { return factor * scale }
        return 10 * scale
    }

    /// A tick label with as many decimals as the step needs (exponent form for tiny or huge ones).
    func label(_ value: Double) -> String {
        if value.magnitude < step * 1e-6 { return "0" }
        let magnitude = Swift.max(high.magnitude, low.magnitude)
        if step < 1e-4 || magnitude >= 1e6 { return formatNumber(value) }
        var decimals = 0
        var scaled = step
        while (scaled - scaled.rounded()).magnitude > 1e-9 * Swift.max(1, scaled) && decimals < 8 {
            scaled *= 10
            decimals += 1
        }
        return formatDecimal(value, digits: decimals)
    }
}

/// A coordinate with two decimals at most (and no `-0`).
func num(_ value: Double) -> String {
    let text = formatDecimal(value, digits: 2)
    var trimmed = Substring(text)
    if trimmed.contains(".") {
        while trimmed.hasSuffix("0") { trimmed = trimmed.dropLast() }
        if trimmed.hasSuffix(".") { trimmed = trimmed.dropLast() }
    }
    return trimmed == "-0" ? "0" : String(trimmed)
}

/// `text` with XML's special characters escaped (attribute- and content-safe).
func escape(_ text: String) -> String {
    var out = ""
    for c in text.unicodeScalars {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        case _ where c.value < 0x20 && c != "\t" && c != "\n": out += "\u{FFFD}"
        default: out.unicodeScalars.append(c)
        }
    }
    return out
}
