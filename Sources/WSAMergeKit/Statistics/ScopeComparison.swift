/// `scope`: each model's scope per tensor, the fused scope and how far the models disagree.
public struct ScopeComparison {
    public struct Row {
        public let name: String
        public let scopes: [Scope]
        public let fused: Scope
        /// Largest std / smallest std (`nil` when the smallest is 0).
        public let stdRatio: Double?
        /// Largest KL(N(μ_i, σ_i²) ‖ N(μ_f, σ_f²)) over the models.
        public let kl: Double?
    }

    public enum SortKey: String, CaseIterable, Sendable { case storage, std_ratio, kl }

    public let models: [String]
    public let weights: [Double]
    public let fusion: ScopeFusion
    public private(set) var rows: [Row]
    /// Tensors some models lack: name and the models that lack it.
    public let missing: [(name: String, missingFrom: [String])]
    /// Tensors that cannot be compared: float in some models but not in others, or of
    /// different shapes; name and why.
    public let skipped: [(name: String, reason: String)]

    /// Measures every selected, decodable tensor present in all `checkpoints` (in the first
    /// one's storage order) and fuses their scopes. Every name, dtype and shape is checked
    /// before anything is measured.
    public init(_ checkpoints: [Checkpoint], weights: [Double], fusion: ScopeFusion, filter: TensorFilter, jobs: Int) throws {
        models = checkpoints.map(\.path)
        self.weights = weights
        self.fusion = fusion
        var missing: [(String, [String])] = []
        var skipped: [(String, String)] = []
        var names: [String] = []
        var seen = Set<ByteKey>()  // names compare byte-wise
        for checkpoint in checkpoints {
            for tensor in checkpoint.tensors where filter.selects(tensor.name) && seen.insert(ByteKey(tensor.name)).inserted {
                names.append(tensor.name)
            }
        }
        // First every structural check, then the measurements: whole tensors side by side (when
        // every checkpoint `readsTensorsInParallel`), results in order.
        var measured: [(name: String, sources: [(checkpoint: Checkpoint, index: Int)])] = []
        for name in names {
            let lacking = checkpoints.filter { $0.index(of: name) == nil }.map(\.path)
            if !lacking.isEmpty {
                missing.append((name, lacking))
                continue
            }
            var sources: [(checkpoint: Checkpoint, index: Int)] = []
            for checkpoint in checkpoints {
                let i = checkpoint.index(of: name)!
                let tensor = checkpoint.tensors[i]
                guard tensor.dtype.isFloat, tensor.dtype.isDecodable else {
                    // Integer, bool and undecodable tensors have no weight scope: said only when
                    // the models disagree on the kind, else they are simply not weights.
                    if checkpoints.contains(where: { $0.tensors[$0.index(of: name)!].dtype.isFloat }) {
                        skipped.append((name, "\(checkpoint.path) stores it as \(tensor.dtype.rawValue)"))
                    }
                    break
                }
                let first = checkpoints[0].tensors[checkpoints[0].index(of: name)!].shape
                guard tensor.shape == first else {
                    // Listed, as fuse words it, instead of ending the whole report.
                    skipped.append((name, "shape \(tensor.shape) in \(checkpoint.path) differs from \(first) in \(models[0])"))
                    break
                }
                sources.append((checkpoint, i))
            }
            if sources.count == checkpoints.count { measured.append((name, sources)) }
        }
        let work = measured.flatMap(\.sources)
        let scopes = try parallelMap(sizes: work.map { $0.checkpoint.tensors[$0.index].byteCount }, jobs: jobs,
                                     serial: checkpoints.contains { !$0.readsTensorsInParallel }) { k, jobs in
            let m = try TensorStatistics.compute(try work[k].checkpoint.readerInAnyOrder(for: work[k].index), jobs: jobs).moments!
            return Scope(mean: m.finiteMean ?? .nan, std: m.std ?? .nan)
        }
        var rows: [Row] = []
        for (k, entry) in measured.enumerated() {
            let scopes = Array(scopes[k * checkpoints.count..<(k + 1) * checkpoints.count])
            let fused = fusion.fuse(scopes, weights: weights)
            let stds = scopes.map(\.std)
            let lo = stds.min()!, hi = stds.max()!
            let kls = scopes.map { ScopeFusion.kl($0, fused) }
            rows.append(Row(name: entry.name, scopes: scopes, fused: fused, stdRatio: lo > 0 && !stds.contains(where: \.isNaN) ? hi / lo : nil,
                            kl: kls.contains { $0 == nil } ? nil : kls.map { $0! }.max()))
        }
        self.rows = rows
        self.missing = missing
        self.skipped = skipped
    }

    /// Orders rows most divergent first (`nil` last, storage order among equals).
    public mutating func sort(by key: SortKey) {
        func value(_ row: Row) -> Double? { key == .kl ? row.kl : row.stdRatio }
        guard key != .storage else { return }
        rows = rows.enumerated().sorted { a, b in
            switch (value(a.element), value(b.element)) {
            case let (x?, y?): return x != y ? x > y : a.offset < b.offset
            case (_?, nil): return true
            case (nil, _?): return false
            case (nil, nil): return a.offset < b.offset
            }
        }.map(\.element)
    }

    public var json: JSON {
        var members: [(String, JSON)] = [
            ("models", .array(models.map { .string($0) })),
            ("weights", .array(weights.map { .double($0) })),
            ("fusion", .string(fusion.rawValue)),
            ("tensors", .array(rows.map { row in
                .object([
                    ("name", .string(row.name)),
                    ("scopes", .array(row.scopes.map(\.json))),
                    ("fused", row.fused.json),
                    ("std_ratio", .number(row.stdRatio)),
                    ("kl", .number(row.kl)),
                ])
            })),
        ]
        members += ScopeComparison.listsJSON(missing: missing, skipped: skipped)
        return .object(members)
    }

    public var table: String {
        var headers = ["name"]
        for i in models.indices { headers += ["mean\(i + 1)", "std\(i + 1)"] }
        headers += ["fused mean", "fused std", "std ratio", "kl"]
        var table = Table(headers: headers, numericColumns: Set(1..<headers.count))
        for row in rows {
            var cells = [shortenMiddle(row.name)]
            for s in row.scopes { cells += [formatNumber(s.mean), formatNumber(s.std)] }
            cells += [formatNumber(row.fused.mean), formatNumber(row.fused.std), formatNumber(row.stdRatio), formatNumber(row.kl)]
            table.add(cells)
        }
        return table.text
    }
}

/// A fused target scope per tensor, as `scope -o` writes it and `fuse --target-scope` reads it.
public struct TargetScope: Sendable {
    public let scopes: Scopes

    /// Target scopes by tensor name, compared byte-wise.
    public struct Scopes: Sendable {
        var byName: [ByteKey: Scope] = [:]
        public subscript(name: String) -> Scope? { byName[ByteKey(name)] }
    }

    /// Reads the `tensors[].name` and `tensors[].fused` of a scope document.
    public init(path: String) throws {
        let file = try ReadableFile(path: path)
        guard file.size <= 1 << 30 else { throw WSAMergeError.malformed(file: path, reason: "target scope file is too large") }
        let bytes = try file.readBytes(at: 0, count: file.size)
        // Walked with the pull reader: only names and fused scopes are kept, so memory stays a
        // fraction of the file, however many tensors and models it lists.
        var scopes = Scopes()
        var sawTensors = false
        do {
            var seen = Set<ByteKey>()
            try bytes.withUnsafeBytes { raw throws in
                var reader = JSONReader(raw)
                guard try reader.peekKind() == .object else {
                    throw WSAMergeError.malformed(file: path, reason: "no 'tensors' array (expected the document `wsamerge scope -o` writes)")
                }
                var keys = Set<ByteKey>()
                try reader.readObject { reader, key, offset in
                    guard keys.insert(ByteKey(key)).inserted else { throw JSONParseError(offset: offset, reason: "duplicate key '\(key)'") }
                    guard key == "tensors", try reader.peekKind() == .array else { return try reader.skipValue() }
                    sawTensors = true
                    try reader.readArray { reader in
                        guard try reader.peekKind() == .object else {
                            throw WSAMergeError.malformed(file: path, reason: "a tensor entry lacks a name or a fused scope")
                        }
                        var name: String?
                        var fused: JSON?
                        var fields = Set<ByteKey>()
                        try reader.readObject { reader, field, offset in
                            guard fields.insert(ByteKey(field)).inserted else { throw JSONParseError(offset: offset, reason: "duplicate key '\(field)'") }
                            switch field {
                            case "name": name = try reader.readValue().stringValue
                            case "fused": fused = try reader.readValue()
                            default: try reader.skipValue()
                            }
                        }
                        guard let name, let fused else {
                            throw WSAMergeError.malformed(file: path, reason: "a tensor entry lacks a name or a fused scope")
                        }
                        guard seen.insert(ByteKey(name)).inserted else {
                            throw WSAMergeError.malformed(file: path, tensor: name, reason: "listed twice (which target would apply?)")
                        }
                        // `null` (a tensor without finite values): no target for it, as if it were absent.
                        if fused["mean"] == .null || fused["std"] == .null { return }
                        guard let mean = fused["mean"]?.doubleValue, let std = fused["std"]?.doubleValue,
                              mean.isFinite, std.isFinite, std >= 0 else {
                            throw WSAMergeError.malformed(file: path, tensor: name, reason: "fused scope is not a finite mean and a std ≥ 0")
                        }
                        scopes.byName[ByteKey(name)] = Scope(mean: mean, std: std)
                    }
                }
                try reader.finish()
            }
        } catch let error as JSONParseError {
            throw WSAMergeError.malformed(file: path, reason: "not valid JSON: \(error)")
        }
        guard sawTensors else {
            throw WSAMergeError.malformed(file: path, reason: "no 'tensors' array (expected the document `wsamerge scope -o` writes)")
        }
        self.scopes = scopes
    }
}

extension ScopeComparison {
    /// The `missing` and `skipped` lists `scope` and `compare` report, left out when empty.
    static func listsJSON(missing: [(name: String, missingFrom: [String])], skipped: [(name: String, reason: String)]) -> [(String, JSON)] {
        var members: [(String, JSON)] = []
        if !missing.isEmpty {
            members.append(("missing", .array(missing.map {
                .object([("name", .string($0.name)), ("missing_from", .array($0.missingFrom.map { .string($0) }))])
            })))
        }
        if !skipped.isEmpty {
            members.append(("skipped", .array(skipped.map {
                .object([("name", .string($0.name)), ("reason", .string($0.reason))])
            })))
        }
        return members
    }
}
