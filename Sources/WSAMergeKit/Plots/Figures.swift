/// The figures of `scope --plot` and `compare --plot`: reports rearranged into panels, one per
/// tensor family (the name with its layer index replaced by `*`, in order of first appearance)
/// with the layer index on x, and the tensors outside the layers in a last panel as points.
public enum Figures {
    /// One row of values per tensor: `values[s]` for series `s`, and the target's value.
    public struct Row: Sendable {
        public var name: String
        public var values: [Double?]
        public var target: Double?

        public init(name: String, values: [Double?], target: Double? = nil) {
            self.name = name
            self.values = values
            self.target = target
        }
    }

    /// Groups `rows` into panels; `labels` name the series, `targetLabel` the dashed target
    /// (drawn in a panel when some of its rows have a target value).
    public static func byLayer(title: String, yLabel: String, labels: [String], targetLabel: String = "target",
                               rows: [Row]) -> Plot {
        var families: [String] = []
        var layered: [String: [(layer: Int, row: Row)]] = [:]
        var others: [Row] = []
        for row in rows {
            if let (family, layer) = LayerGroups.family(of: row.name) {
                if layered[family] == nil { families.append(family) }
                layered[family, default: []].append((layer, row))
            } else {
                others.append(row)
            }
        }
        var panels: [Plot.Panel] = []
        for family in families {
            let entries = layered[family]!.sorted { $0.layer < $1.layer }
            var series = labels.indices.map { s in
                Plot.Series(label: labels[s], points: entries.map { (Double($0.layer), $0.row.values[s]) })
            }
            if entries.contains(where: { $0.row.target != nil }) {
                series.append(Plot.Series(label: targetLabel, isTarget: true, points: entries.map { (Double($0.layer), $0.row.target) }))
            }
            panels.append(Plot.Panel(title: family, kind: .lines, xLabel: "layer", series: series))
        }
        if !others.isEmpty {
            var series = labels.indices.map { s in
                Plot.Series(label: labels[s], points: others.enumerated().map { (Double($0.offset), $0.element.values[s]) })
            }
            if others.contains(where: { $0.target != nil }) {
                series.append(Plot.Series(label: targetLabel, isTarget: true,
                                          points: others.enumerated().map { (Double($0.offset), $0.element.target) }))
            }
            panels.append(Plot.Panel(title: "tensors outside the layers", kind: .points, xLabel: "tensor",
                                     categories: others.map(\.name), series: series))
        }
        return Plot(title: title, yLabel: yLabel, panels: panels)
    }

    /// File names without their directories when those tell them apart, else the paths as given.
    static func shortLabels(_ paths: [String]) -> [String] {
        let names = paths.map { String($0.split(separator: "/").last ?? Substring($0)) }
        return Set(names).count == names.count ? names : paths
    }

    /// `scope --plot`: each model's std per tensor, the fused target's dashed.
    public static func scope(_ comparison: ScopeComparison) -> Plot {
        byLayer(title: "Weight scope (std) per layer", yLabel: "std", labels: shortLabels(comparison.models),
                targetLabel: "fused target (\(comparison.fusion.rawValue))",
                rows: comparison.rows.map { row in
                    Row(name: row.name, values: row.scopes.map { $0.std.isFinite ? $0.std : nil },
                        target: row.fused.std.isFinite ? row.fused.std : nil)
                })
    }

    /// `compare --plot`: `rel_l2` of each model against the reference, or with a base each
    /// input's `rel_norm`.
    public static func compare(_ comparison: Comparison) -> Plot {
        let series = comparison.plotSeries
        let title = comparison.base == nil
            ? "Distance from \(shortenMiddle(comparison.models[0], width: 48)) per layer"
            : "Task-vector size over \(shortenMiddle(comparison.base!, width: 48)) per layer"
        return byLayer(title: title, yLabel: series.quantity, labels: shortLabels(series.labels),
                       rows: series.rows.map { Row(name: $0.name, values: $0.values) })
    }
}
