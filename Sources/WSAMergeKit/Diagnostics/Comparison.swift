/// `compare`: how checkpoints differ, per tensor and per layer.
///
/// Without a base, every model is compared with the first (the reference A):
/// ```
/// cosine = ⟨A, X⟩ / (‖A‖ ‖X‖)     rel_l2 = ‖X − A‖ / ‖A‖     max_abs_diff = max |X − A|
/// changed = elements whose stored bytes differ (decoded values when the dtypes differ)
/// ```
/// With a base b, on the task vectors δ_i = x_i − b: `norm` ‖δ_i‖, `rel_norm` ‖δ_i‖ / ‖b‖, the
/// pairwise `cosine` of δ_i and δ_j, `sign_conflict` (the fraction of elements whose nonzero δ_i
/// do not all share one sign) and `overlap_top`, the Jaccard overlap |S_i ∩ S_j| / |S_i ∪ S_j| of
/// the top-magnitude sets: S_i holds the nonzero δ_i among the k = max(1, ⌊density·N⌋) elements
/// of largest |δ_i| (ties earliest in C order, the magnitude sparsifier's exact selection).
///
/// Ratios whose denominator is 0 are `nil` (JSON `null`). Layer rows pool the sums of their
/// tensors, so `rel_l2` of a layer is ‖X − A‖ / ‖A‖ over all of its elements.
public struct Comparison: Sendable {
    public enum SortKey: String, CaseIterable, Sendable {
        case storage, cosine, rel_l2, max_abs_diff, changed, rel_norm, sign_conflict, overlap

        /// Whether the key needs a base (`true`), needs its absence (`false`), or fits both (`nil`).
        public var needsBase: Bool? {
            switch self {
            case .storage, .cosine: nil
            case .rel_l2, .max_abs_diff, .changed: false
            case .rel_norm, .sign_conflict, .overlap: true
            }
        }
    }

    enum Sums: Sendable {
        case differences(DifferenceSums)
        case taskVectors(TaskVectorSums)

        mutating func add(_ other: Sums) {
            switch (self, other) {
            case (.differences(var a), .differences(let b)): a.add(b); self = .differences(a)
            case (.taskVectors(var a), .taskVectors(let b)): a.add(b); self = .taskVectors(a)
            default: preconditionFailure("pooling sums of different kinds")
            }
        }
    }

    public struct Row: Sendable {
        public let name: String
        public let shape: [Int]
        let sums: Sums
    }

    public struct LayerRow: Sendable {
        public let layer: Int
        public let tensorCount: Int
        let sums: Sums
    }

    /// The compared models in order (the reference first, without a base).
    public let models: [String]
    public let base: String?
    public let density: Double
    public private(set) var rows: [Row]
    /// Tensors some models (or the base) lack: name and the files that lack it.
    public let missing: [(name: String, missingFrom: [String])]
    /// Tensors float in some models but not in others: name and why.
    public let skipped: [(name: String, reason: String)]

    /// Measures every selected float tensor that every checkpoint holds (in the first one's
    /// storage order, then the others'). Every name, dtype and shape is checked before anything
    /// is read. `density` (0 < density ≤ 1) sets the top-magnitude sets of a base comparison.
    public init(_ checkpoints: [Checkpoint], base: Checkpoint? = nil, density: Double = 0.2, filter: TensorFilter,
                jobs: Int) throws {
        precondition(checkpoints.count >= (base == nil ? 2 : 1))
        guard density > 0 && density <= 1 else { throw WSAMergeError.usage("density must be > 0 and ≤ 1, not \(density)") }
        models = checkpoints.map(\.path)
        self.base = base?.path
        self.density = density
        let all = (base.map { [$0] } ?? []) + checkpoints
        var missing: [(String, [String])] = []
        var skipped: [(String, String)] = []
        var names: [String] = []
        var seen = Set<String>()
        for checkpoint in all {
            for tensor in checkpoint.tensors where filter.selects(tensor.name) && seen.insert(tensor.name).inserted {
                names.append(tensor.name)
            }
        }
        var measured: [(name: String, shape: [Int], sources: [Int])] = []
        for name in names {
            let lacking = all.filter { $0.index(of: name) == nil }.map(\.path)
            if !lacking.isEmpty {
                missing.append((name, lacking))
                continue
            }
            let indices = all.map { $0.index(of: name)! }
            let tensors = zip(all, indices).map { $0.tensors[$1] }
            if let odd = tensors.firstIndex(where: { !$0.dtype.isFloat || !$0.dtype.isDecodable }) {
                // As in `scope`: integer, bool and undecodable tensors are not weights; said only
                // when the models disagree on the kind.
                if tensors.contains(where: \.dtype.isFloat) {
                    skipped.append((name, "\(all[odd].path) stores it as \(tensors[odd].dtype.rawValue)"))
                }
                continue
            }
            if let k = tensors.firstIndex(where: { $0.shape != tensors[0].shape }) {
                // As in `scope`: listed, and the other tensors compared (a fine-tune's resized
                // vocabulary should not hide every other difference).
                skipped.append((name, "shape \(tensors[k].shape) in \(all[k].path) differs from \(tensors[0].shape) in \(all[0].path)"))
                continue
            }
            measured.append((name, tensors[0].shape, indices))
        }
        let sizes = measured.map { entry in zip(all, entry.sources).reduce(0) { $0 + $1.0.tensors[$1.1].byteCount } }
        let density = density, hasBase = base != nil, work = measured
        let sums = try parallelMap(sizes: sizes, jobs: jobs, serial: all.contains { !$0.readsTensorsInParallel }) { t, jobs in
            let sources = work[t].sources
            @Sendable func reader(_ k: Int) throws -> TensorReader { try all[k].reader(for: sources[k]) }
            if hasBase {
                return Sums.taskVectors(try TaskVectorSums.measure(inputs: all.count - 1, reader: reader,
                                                                   count: elementCount(of: work[t].shape)!,
                                                                   density: density, jobs: jobs))
            }
            return Sums.differences(try DifferenceSums.measure(try all.indices.map(reader), jobs: jobs, fresh: reader))
        }
        rows = zip(measured, sums).map { Row(name: $0.name, shape: $0.shape, sums: $1) }
        self.missing = missing
        self.skipped = skipped
    }

    /// The rows pooled per layer index (`LayerGroups.layerIndex`), in ascending layer order.
    public var layers: [LayerRow] {
        var pooled: [Int: (count: Int, sums: Sums)] = [:]
        for row in rows {
            guard let layer = LayerGroups.layerIndex(of: row.name) else { continue }
            if var entry = pooled[layer] {
                entry.count += 1
                entry.sums.add(row.sums)
                pooled[layer] = entry
            } else {
                pooled[layer] = (1, row.sums)
            }
        }
        return pooled.keys.sorted().map { LayerRow(layer: $0, tensorCount: pooled[$0]!.count, sums: pooled[$0]!.sums) }
    }

    /// Orders rows most different first: lowest cosine, else the largest value of the key over
    /// the pairs or inputs (`nil` last, storage order among equals).
    public mutating func sort(by key: SortKey) {
        guard key != .storage else { return }
        func value(_ row: Row) -> Double? {
            let m = Metrics(row.sums)
            let values: [Double?]
            switch key {
            case .storage: return nil
            case .cosine: return m.pairs.compactMap(\.cosine).min().map { -$0 }
            case .rel_l2: values = m.pairs.map(\.relL2)
            case .max_abs_diff: values = m.pairs.map(\.maxAbsDiff)
            case .changed: values = m.pairs.map { $0.changed.map(Double.init) }
            case .rel_norm: values = m.taskVectors.map(\.relNorm)
            case .sign_conflict: values = [m.signConflict]
            case .overlap: values = m.pairs.map(\.overlap)
            }
            return values.compactMap { $0 }.max()
        }
        let keyed = rows.map { (row: $0, value: value($0)) }
        rows = keyed.enumerated().sorted { a, b in
            switch (a.element.value, b.element.value) {
            case let (x?, y?): return x != y ? x > y : a.offset < b.offset
            case (_?, nil): return true
            case (nil, _?): return false
            case (nil, nil): return a.offset < b.offset
            }
        }.map(\.element.row)
    }

    // MARK: - Derived quantities

    /// What a row (or a layer) reports, derived from its sums.
    struct Metrics {
        struct Pair {
            /// Without a base: the compared model's index (1…); with one: the two inputs (0…).
            var first = 0
            var second = 0
            var cosine: Double?
            var relL2: Double?
            var maxAbsDiff: Double?
            var changed: Int?
            var overlap: Double?
        }

        struct TaskVector {
            var norm: Double?
            var relNorm: Double?
        }

        var count = 0
        var nonfinite = 0
        var scopes: [Scope?] = []
        var pairs: [Pair] = []
        var taskVectors: [TaskVector] = []
        var signConflict: Double?

        init(_ sums: Sums) {
            switch sums {
            case .differences(let s):
                count = s.count
                nonfinite = s.nonfinite
                scopes = s.scopes.map { $0.n > 0 ? $0.scope : nil }
                let finite = s.count - s.nonfinite
                let referenceNorm = s.referenceSquares.squareRoot()
                pairs = s.squares.indices.map { j in
                    Pair(first: 0, second: j + 1,
                         cosine: Self.cosine(s.dots[j], referenceNorm, s.squares[j].squareRoot()),
                         relL2: Self.ratio(s.differenceSquares[j].squareRoot(), referenceNorm),
                         maxAbsDiff: finite > 0 ? s.maxAbs[j] : nil, changed: s.changed[j])
                }
            case .taskVectors(let s):
                count = s.count
                nonfinite = s.nonfinite
                let n = s.inputs
                let baseNorm = s.baseSquares.squareRoot()
                let norms = (0..<n).map { s.gram[$0 * n + $0].squareRoot() }
                let finite = s.count - s.nonfinite
                // over the finite elements, as in stats: null when there are none
                taskVectors = norms.map { TaskVector(norm: finite > 0 && $0.isFinite ? $0 : nil, relNorm: finite > 0 ? Self.ratio($0, baseNorm) : nil) }
                for i in 0..<n {
                    for j in (i + 1)..<Swift.max(i + 1, n) {
                        let both = s.intersections[i * n + j]
                        let union = s.members[i] + s.members[j] - both
                        pairs.append(Pair(first: i, second: j, cosine: Self.cosine(s.gram[i * n + j], norms[i], norms[j]),
                                          overlap: union > 0 ? Double(both) / Double(union) : nil))
                    }
                }
                signConflict = finite > 0 ? Double(s.conflicts) / Double(finite) : nil
            }
        }

        /// ⟨x, y⟩ / (‖x‖ ‖y‖) within [−1, 1]; nil when a norm is 0, or when a sum overflowed
        /// (values beyond about 1e154, whose squares are infinite): no value rather than a wrong one.
        static func cosine(_ dot: Double, _ x: Double, _ y: Double) -> Double? {
            guard x > 0, y > 0, x.isFinite, y.isFinite, dot.isFinite else { return nil }
            return Swift.min(1, Swift.max(-1, dot / x / y))
        }

        /// a / b; nil when b is 0 or either sum overflowed.
        static func ratio(_ a: Double, _ b: Double) -> Double? {
            guard b > 0, a.isFinite, b.isFinite else { return nil }
            return a / b
        }
    }

    // MARK: - Documents

    /// The fields of a row or a layer after its name.
    func fields(_ sums: Sums) -> [(String, JSON)] {
        let m = Metrics(sums)
        var fields: [(String, JSON)] = [("count", .int(m.count)), ("nonfinite", .int(m.nonfinite))]
        if base == nil {
            fields.append(("scopes", .array(m.scopes.map { $0?.json ?? .object([("mean", .null), ("std", .null)]) })))
            fields.append(("pairs", .array(m.pairs.map { p in
                .object([("model", .string(models[p.second])), ("cosine", .number(p.cosine)), ("rel_l2", .number(p.relL2)),
                         ("max_abs_diff", .number(p.maxAbsDiff)), ("changed", .int(p.changed ?? 0))])
            })))
        } else {
            fields.append(("task_vectors", .array(zip(models, m.taskVectors).map { model, t in
                .object([("model", .string(model)), ("norm", .number(t.norm)), ("rel_norm", .number(t.relNorm))])
            })))
            fields.append(("pairs", .array(m.pairs.map { p in
                .object([("models", .array([.string(models[p.first]), .string(models[p.second])])),
                         ("cosine", .number(p.cosine)), ("overlap_top", .number(p.overlap))])
            })))
            fields.append(("sign_conflict", .number(m.signConflict)))
        }
        return fields
    }

    /// The JSON document; `layers` adds the per-layer pooled rows.
    public func json(layers includeLayers: Bool = false) -> JSON {
        var members: [(String, JSON)] = [("models", .array(models.map { .string($0) }))]
        if let base {
            members += [("base", .string(base)), ("density", .double(density))]
        } else {
            members.append(("reference", .string(models[0])))
        }
        members.append(("tensors", .array(rows.map { row in
            .object([("name", .string(row.name)), ("shape", .array(row.shape.map { .int($0) }))] + fields(row.sums))
        })))
        if includeLayers {
            members.append(("layers", .array(layers.map { layer in
                .object([("layer", .int(layer.layer)), ("tensor_count", .int(layer.tensorCount))] + fields(layer.sums))
            })))
        }
        members += ScopeComparison.listsJSON(missing: missing, skipped: skipped)
        return .object(members)
    }

    /// Aligned columns for people: models numbered as listed on the first line.
    public func table(layers includeLayers: Bool = false) -> String {
        var text = ""
        if let base { text += "base: \(base)\n" }
        for (i, model) in models.enumerated() {
            text += "\(i + 1): \(model)\(base == nil && i == 0 ? " (reference)" : "")\n"
        }
        func columns(_ first: String) -> [String] {
            var headers = [first]
            if base == nil {
                for j in 1..<models.count { headers += ["cos 1-\(j + 1)", "rel_l2 \(j + 1)", "max|Δ| \(j + 1)", "changed \(j + 1)"] }
            } else {
                for i in models.indices { headers.append("rel_norm \(i + 1)") }
                for i in models.indices { for j in (i + 1)..<max(i + 1, models.count) { headers.append("cos \(i + 1)-\(j + 1)") } }
                for i in models.indices { for j in (i + 1)..<max(i + 1, models.count) { headers.append("overlap \(i + 1)-\(j + 1)") } }
                headers.append("sign conflict")
            }
            return headers
        }
        func cells(_ sums: Sums) -> [String] {
            let m = Metrics(sums)
            if base == nil {
                return m.pairs.flatMap { [formatNumber($0.cosine), formatNumber($0.relL2), formatNumber($0.maxAbsDiff), String($0.changed ?? 0)] }
            }
            return m.taskVectors.map { formatNumber($0.relNorm) } + m.pairs.map { formatNumber($0.cosine) }
                + m.pairs.map { formatNumber($0.overlap) } + [formatNumber(m.signConflict)]
        }
        let headers = columns("name")
        var table = Table(headers: headers, numericColumns: Set(1..<headers.count))
        for row in rows { table.add([shortenMiddle(row.name)] + cells(row.sums)) }
        text += table.text
        if includeLayers {
            var layerTable = Table(headers: columns("layer"), numericColumns: Set(0..<headers.count))
            for layer in layers { layerTable.add([String(layer.layer)] + cells(layer.sums)) }
            text += "\n" + layerTable.text
        }
        return text
    }

    /// Per row, the quantity a plot shows for each series: without a base `rel_l2` of each
    /// model against the reference (series: models 2…), with one `rel_norm` of each input.
    public var plotSeries: (quantity: String, labels: [String], rows: [(name: String, values: [Double?])]) {
        let labels = base == nil ? Array(models.dropFirst()) : models
        let quantity = base == nil ? "rel_l2 = ‖X − A‖ / ‖A‖" : "rel_norm = ‖δ‖ / ‖base‖"
        return (quantity, labels, rows.map { row in
            let m = Metrics(row.sums)
            return (row.name, base == nil ? m.pairs.map(\.relL2) : m.taskVectors.map(\.relNorm))
        })
    }
}
