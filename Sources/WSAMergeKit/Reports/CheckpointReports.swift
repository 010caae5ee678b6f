/// The JSON and table documents of `inspect` and `stats`. Key order is fixed and documented by
/// SPEC; one document per input.
public enum CheckpointReports {
    static func header(_ checkpoint: Checkpoint, tensors: [TensorInfo]) -> [(String, JSON)] {
        [
            ("file", .string(checkpoint.path)),
            ("format", .string(checkpoint.format.rawValue)),
            ("metadata", .object(checkpoint.metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })),
            ("tensor_count", .int(tensors.count)),
            ("parameter_count", .int(tensors.reduce(0) { $0 &+ $1.elementCount })),
        ]
    }

    static func describe(_ tensor: TensorInfo) -> [(String, JSON)] {
        [("name", .string(tensor.name)), ("dtype", .string(tensor.dtype.rawValue)), ("shape", .array(tensor.shape.map { .int($0) }))]
    }

    /// `inspect`: the table of contents (headers only). PyTorch inputs also list the values that
    /// are not tensors: `"non_tensors": [{"name": "epoch", "value": "3"}, …]`.
    public static func inspect(_ checkpoint: Checkpoint, filter: TensorFilter) -> JSON {
        let tensors = checkpoint.tensors.filter { filter.selects($0.name) }
        var members = header(checkpoint, tensors: tensors) + [
            ("tensors", .array(tensors.map { .object(describe($0) + [("bytes", .int($0.byteCount))]) })),
        ]
        if checkpoint.format == .pytorch || checkpoint.format == .shardedPyTorch {
            members.append(("non_tensors", .array(checkpoint.nonTensors.filter { filter.selects($0.name) }.map {
                .object([("name", .string($0.name)), ("value", .string($0.value))])
            })))
        }
        return .object(members)
    }

    public static func inspectTable(_ checkpoint: Checkpoint, filter: TensorFilter) -> String {
        var table = Table(headers: ["name", "dtype", "shape", "bytes"], numericColumns: [3])
        var total = 0
        for tensor in checkpoint.tensors where filter.selects(tensor.name) {
            table.add([shortenMiddle(tensor.name), tensor.dtype.rawValue, shapeText(tensor.shape), formatBytes(tensor.byteCount)])
            total += tensor.byteCount
        }
        var text = "\(escapeControlCharacters(checkpoint.path)) (\(checkpoint.format.rawValue)): \(table.rows.count) tensors, \(formatBytes(total))\n" + table.text
        let leaves = checkpoint.nonTensors.filter { filter.selects($0.name) }
        if !leaves.isEmpty {
            var values = Table(headers: ["non-tensor", "value"], numericColumns: [])
            for leaf in leaves { values.add([shortenMiddle(leaf.name), leaf.value]) }
            text += "\n" + values.text
        }
        return text
    }

    /// The statistics fields of one tensor, as SPEC lists them.
    public static func statistics(_ s: TensorStatistics) -> JSON {
        var fields = describe(s.tensor) + [("count", .int(s.tensor.elementCount))]
        guard let m = s.moments else {
            return .object(fields + [("skipped", .string(s.skipped ?? "not decoded"))])
        }
        fields += [
            ("mean", .number(m.finiteMean)), ("std", .number(m.std)),
            ("min", .number(m.finiteMin)), ("max", .number(m.finiteMax)),
            ("abs_mean", .number(m.absMean)), ("l2_norm", .number(m.l2Norm)),
            ("zeros", .int(m.zeros)), ("nan", .int(m.nan)), ("inf", .int(m.inf)),
            ("skewness", .number(m.skewness)), ("excess_kurtosis", .number(m.excessKurtosis)),
        ]
        return .object(fields)
    }

    /// `stats`: one document per checkpoint; with `groups`, pooled scopes per layer index.
    public static func stats(_ checkpoint: Checkpoint, _ statistics: [TensorStatistics], groupByLayer: Bool) -> JSON {
        var members = header(checkpoint, tensors: statistics.map(\.tensor))
        members.append(("tensors", .array(statistics.map(Self.statistics))))
        if groupByLayer {
            members.append(("layers", .array(LayerGroups.pool(statistics).map { group in
                .object([
                    ("layer", .int(group.layer)), ("tensor_count", .int(group.tensorCount)),
                    ("count", .int(group.elementCount)),
                    ("mean", .number(group.moments.finiteMean)), ("std", .number(group.moments.std)),
                    ("min", .number(group.moments.finiteMin)), ("max", .number(group.moments.finiteMax)),
                    ("nan", .int(group.moments.nan)), ("inf", .int(group.moments.inf)),
                ])
            })))
        }
        return .object(members)
    }

    public static func statsTable(_ checkpoint: Checkpoint, _ statistics: [TensorStatistics], groupByLayer: Bool = false) -> String {
        // Every field of the JSON, in its order.
        var table = Table(headers: ["name", "dtype", "shape", "count", "mean", "std", "min", "max", "abs_mean", "l2_norm", "zeros", "nan",
                                    "inf", "skewness", "excess_kurtosis"], numericColumns: Set(3...14))
        for s in statistics {
            let m = s.moments
            table.add([shortenMiddle(s.tensor.name), s.tensor.dtype.rawValue, shapeText(s.tensor.shape), String(s.tensor.elementCount),
                       formatNumber(m?.finiteMean), formatNumber(m?.std), formatNumber(m?.finiteMin), formatNumber(m?.finiteMax),
                       formatNumber(m?.absMean), formatNumber(m?.l2Norm), m.map { String($0.zeros) } ?? "-", m.map { String($0.nan) } ?? "-",
                       m.map { String($0.inf) } ?? "-", formatNumber(m?.skewness), formatNumber(m?.excessKurtosis)])
        }
        var text = "\(escapeControlCharacters(checkpoint.path)) (\(checkpoint.format.rawValue))\n" + table.text
        if groupByLayer {
            // Every field of the JSON's layers, in its order.
            var layers = Table(headers: ["layer", "tensors", "count", "mean", "std", "min", "max", "nan", "inf"], numericColumns: Set(0...8))
            for g in LayerGroups.pool(statistics) {
                layers.add([String(g.layer), String(g.tensorCount), String(g.elementCount), formatNumber(g.moments.finiteMean),
                            formatNumber(g.moments.std), formatNumber(g.moments.finiteMin), formatNumber(g.moments.finiteMax),
                            String(g.moments.nan), String(g.moments.inf)])
            }
            text += "\n" + layers.text
        }
        return text
    }

    static func shapeText(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }
}

/// Pools tensor statistics by the layer index in their names.
public enum LayerGroups {
    public struct Group {
        public let layer: Int
        public var tensorCount = 0
        public var elementCount = 0
        public var moments = Moments()
    }

    /// The layer index of `name`: the number after `layers`, `layer`, `h` or `blocks` (see `layerNumber`).
    public static func layerIndex(of name: String) -> Int? { layerNumber(in: name)?.value }

    /// The tensor family of `name` (its layer index replaced by `*`, e.g. `model.layers.*.mlp.weight`)
    /// and that index, found as `layerIndex` finds it; nil for a tensor outside the layers.
    public static func family(of name: String) -> (family: String, layer: Int)? {
        guard let (range, layer) = layerNumber(in: name) else { return nil }
        return (name.replacingCharacters(in: range, with: "*"), layer)
    }

    /// `name` with its layer index (the one `layerIndex` reads) replaced by `layer`; unchanged
    /// outside the layers.
    public static func renaming(_ name: String, layer: Int) -> String {
        guard let (range, _) = layerNumber(in: name) else { return name }
        return name.replacingCharacters(in: range, with: String(layer))
    }

    /// Whether a tensor outside the layers comes before them: an embedding or what feeds it, by
    /// name (`embed`, except GPT-NeoX's head `embed_out`; `wte`, `wpe`, `shared`, `position`,
    /// `rotary`, `relative_pe`, `_pre`, `conv`, `patch`), which covers the pre-weights of
    /// mergekit's language-model architectures; the others (final norms, heads, classifiers,
    /// poolers) come after them.
    public static func precedesTheLayers(_ name: String) -> Bool {
        let name = name.lowercased()
        if name.contains("embed_out") { return false }
        return ["embed", "wte", "wpe", "shared", "position", "rotary", "relative_pe", "_pre", "conv", "patch"].contains { name.contains($0) }
    }

    /// Where the layer index is in `name` and its value: the component after `layers`, `layer`,
    /// `h` or `blocks`, components separated by `.` (PyTorch) or `/` (TensorFlow-style npz keys).
    static func layerNumber(in name: String) -> (range: Range<String.Index>, value: Int)? {
        var parts: [Range<String.Index>] = [], start = name.startIndex
        for i in name.indices where name[i] == "." || name[i] == "/" {
            parts.append(start..<i)
            start = name.index(after: i)
        }
        parts.append(start..<name.endIndex)
        for (k, part) in parts.enumerated().dropLast() where ["layers", "layer", "h", "blocks"].contains(name[part]) {
            if let n = Int(name[parts[k + 1]]), n >= 0 { return (parts[k + 1], n) }
        }
        return nil
    }

    /// Groups in ascending layer order; moments merged exactly, never re-read.
    public static func pool(_ statistics: [TensorStatistics]) -> [Group] {
        var groups: [Int: Group] = [:]
        for s in statistics {
            guard let m = s.moments, let layer = layerIndex(of: s.tensor.name) else { continue }
            var g = groups[layer] ?? Group(layer: layer)
            g.tensorCount += 1
            g.elementCount += s.tensor.elementCount
            g.moments.combine(m)
            groups[layer] = g
        }
        return groups.keys.sorted().map { groups[$0]! }
    }
}
