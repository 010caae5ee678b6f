/// `fuse`: checks everything, then streams every tensor through the strategy into the writer.
public struct Merger {
    public struct Request {
        public var inputs: [String]
        public var weights: [Double]?
        public var strategy: String
        public var settings = StrategySettings()
        public var filter = TensorFilter.all
        public var onMissing = OnMissing.error
        /// `nil` keeps each tensor's dtype from the first input.
        public var dtype: DType?
        public var output: OutputOptions
        /// `--metadata k=v` pairs.
        public var extraMetadata: [(String, String)] = []
        public var strict = false
        public var jobs = 1

        public init(inputs: [String], strategy: String, output: OutputOptions) {
            self.inputs = inputs
            self.strategy = strategy
            self.output = output
        }
    }

    public struct Report {
        public let plan: MergePlan
        public let strategy: String
        public let output: String
        public let results: [TensorMergeResult?]
        public let metadata: [String: String]
        /// Tensors with NaN or infinite input values.
        public let nonFiniteTensors: [String]

        /// Merged tensors whose strategy fell back to another method (zero std, missing target).
        public var fallbacks: [String] {
            zip(plan.items, results).compactMap { item, result in result?.fallback == true ? item.name : nil }
        }

        public var json: JSON {
            .object(Merger.reportHeader(plan, strategy: strategy, output: output) + [
                ("tensors", .array(zip(plan.items, results).map { item, result in
                    var fields: [(String, JSON)] = [("name", .string(item.name)), ("dtype", .string(item.output.dtype.rawValue))]
                    switch item.action {
                    case .copy(let reason): fields.append(("method", .string("copy: \(reason)")))
                    case .merge: fields.append(("method", .string(result?.method ?? "merge")))
                    }
                    if let fused = result?.fused { fields.append(("fused", fused.json)) }
                    return .object(fields)
                })),
            ])
        }
    }

    /// Checks every input (and Fisher file) and the output, without writing: the `--dry-run` plan.
    public static func plan(_ request: Request) throws -> (MergePlan, any MergeStrategy) {
        guard let strategyType = Strategies.named(request.strategy) else {
            let known = Strategies.all.map { $0.identifier }.joined(separator: ", ")
            throw WSAMergeError.usage("unknown strategy '\(request.strategy)' (known: \(known))")
        }
        if let dtype = request.dtype, !DType.targets.contains(dtype) {
            throw WSAMergeError.usage("--dtype \(dtype.rawValue) is not a float type wsamerge can write (use F64, F32, F16 or BF16)")
        }
        let inputs = try CheckpointReader.open(request.inputs)
        let weights = try Weights.normalized(request.weights, count: inputs.count)
        var strategy = try strategyType.init(request.settings)
        try request.output.precheck(inputs: identities(request, inputs))
        let plan = try MergePlan(inputs: inputs, weights: weights, filter: request.filter, onMissing: request.onMissing,
                                 outputDType: request.dtype)
        try strategy.prepare(plan, jobs: request.jobs)
        return (plan, strategy)
    }

    /// Runs the merge and puts the output in place; nothing appears at `-o` unless it succeeds.
    public static func run(_ request: Request, progress: Progress? = nil) throws -> Report {
        var (plan, strategy) = try plan(request)
        try strategy.measure(plan, jobs: request.jobs)
        let metadata = outputMetadata(request, plan: plan, strategy: strategy)
        let writer = try makeWriter(request.output, tensors: plan.items.map(\.output), metadata: metadata,
                                    inputs: identities(request, plan.inputs))
        progress?.start(tensors: plan.items.count, bytes: plan.items.reduce(0) { $0 + $1.output.byteCount })
        var results: [TensorMergeResult?] = []
        var nonFinite: [String] = []
        for item in plan.items {
            switch item.action {
            case .copy:
                let source = item.sources[0]
                try Converter.copy(try plan.inputs[source.input].reader(for: source.index), to: writer)
                results.append(nil)
            case .merge:
                let result = try strategy.merge(item, plan: plan, jobs: request.jobs,
                                                output: Lockstep.Output(dtype: item.output.dtype, writer: writer))
                if result.nonFinite {
                    if request.strict {
                        // Find the input that holds them (only on this error path).
                        var culprit = plan.inputs[item.sources[0].input].path
                        for source in item.sources {
                            let m = try TensorStatistics.compute(try plan.inputs[source.input].reader(for: source.index), jobs: request.jobs).moments
                            if let m, m.nan + m.inf > 0 { culprit = plan.inputs[source.input].path; break }
                        }
                        throw WSAMergeError.malformed(file: culprit, tensor: item.name, reason: "NaN or infinite values (--strict)")
                    }
                    nonFinite.append(item.name)
                }
                results.append(result)
            }
            progress?.tensorDone(bytes: item.output.byteCount)
        }
        try writer.finish()
        progress?.finish()
        return Report(plan: plan, strategy: request.strategy, output: request.output.path, results: results,
                      metadata: metadata, nonFiniteTensors: nonFinite)
    }

    /// Every file the merge reads — models, Fisher files, the target scope — which `-o` may not name.
    static func identities(_ request: Request, _ inputs: [Checkpoint]) -> Set<FileIdentity> {
        var result = inputs.reduce(into: Set<FileIdentity>()) { $0.formUnion($1.identities) }
        for path in request.settings.fisherPaths + [request.settings.targetScopePath].compactMap({ $0 }) {
            if let identity = FileIdentity(path: path) { result.insert(identity) }
        }
        return result
    }

    /// The first input's metadata plus provenance: `wsamerge.version`, `.strategy`, `.inputs`,
    /// `.weights`, the strategy's options, then `--metadata` pairs.
    static func outputMetadata(_ request: Request, plan: MergePlan, strategy: any MergeStrategy) -> [String: String] {
        var metadata = plan.inputs[0].metadata
        metadata["wsamerge.version"] = WSAMergeVersion.current
        metadata["wsamerge.strategy"] = request.strategy
        metadata["wsamerge.inputs"] = JSON.array(plan.inputs.map { .string(baseName(of: $0.path)) }).text
        metadata["wsamerge.weights"] = JSON.array(plan.weights.map { .double($0) }).text
        for (key, value) in strategy.provenance { metadata["wsamerge.\(key)"] = value }
        if let dtype = request.dtype { metadata["wsamerge.dtype"] = dtype.rawValue }
        for (key, value) in request.extraMetadata { metadata[key] = value }
        return metadata
    }

    /// The fields the report and the dry-run plan share.
    static func reportHeader(_ plan: MergePlan, strategy: String, output: String) -> [(String, JSON)] {
        [
            ("output", .string(output)),
            ("strategy", .string(strategy)),
            ("inputs", .array(plan.inputs.map { .string($0.path) })),
            ("weights", .array(plan.weights.map { .double($0) })),
            ("tensor_count", .int(plan.items.count)),
        ]
    }

    /// The `--dry-run` document: what would be written, tensor by tensor.
    public static func dryRunJSON(_ plan: MergePlan, request: Request) -> JSON {
        .object([("dry_run", .bool(true))] + reportHeader(plan, strategy: request.strategy, output: request.output.path) + [
            ("tensors", .array(plan.items.map { item in
                var action: String
                switch item.action {
                case .merge: action = "merge"
                case .copy(let reason): action = "copy: \(reason)"
                }
                return .object([
                    ("name", .string(item.name)), ("dtype", .string(item.output.dtype.rawValue)),
                    ("shape", .array(item.output.shape.map { .int($0) })), ("action", .string(action)),
                    ("inputs", .int(item.sources.count)),
                ])
            })),
        ])
    }
}
