import CKernels

/// `fuse`: checks everything, then streams every tensor through the strategy into the writer.
public struct Merger {
    public struct Request: Sendable {
        public var inputs: [String]
        /// `--base`: the model the inputs were fine-tuned from.
        public var base: String?
        /// The strategy's identifier or alias.
        public var strategy: String
        public var parameters = ParameterSettings()
        /// Extra files by role: per-input roles (`fisher`) list one path per input, shared roles
        /// (`target_scope`) one path.
        public var files: [String: [String]] = [:]
        public var filter = TensorFilter.all
        public var onMissing = OnMissing.error
        /// `nil` keeps each tensor's dtype from the base, else the first input.
        public var dtype: DType?
        public var output: OutputOptions
        /// `--metadata k=v` pairs.
        public var extraMetadata: [(String, String)] = []
        /// Name prefixes removed from the tensors of every model and extra checkpoint.
        public var stripPrefixes: [String] = []
        public var strict = false
        public var jobs = 1
        /// Inputs already opened (a recipe's stacked layer slices), merged instead of opening
        /// `inputs`, which then only names them; the same for the base.
        public var opened: [Checkpoint]?
        public var openedBase: Checkpoint?
        /// Position `t` of each layer index for gradients, when not the model's own layer order
        /// (a recipe's slices are evaluated slice by slice).
        public var layerPositions: [Int: Double]?
        /// Tensors inputs lack by design (a recipe's slices that give an input no model).
        public var gaps: [Int: InputGaps] = [:]
        /// The merge as a recipe (normalised YAML), recorded as `wsamerge.recipe`.
        public var recipe: String?
        /// Other files the merge reads (the recipe file), which `-o` may not name either.
        public var otherReads: [String] = []

        public init(inputs: [String], strategy: String, output: OutputOptions) {
            self.inputs = inputs
            self.strategy = strategy
            self.output = output
        }
    }

    public struct Report {
        public let prepared: Prepared
        public var plan: MergePlan { prepared.plan }
        public let output: String
        public let results: [TensorMergeResult?]
        /// Tensors with NaN or infinite values, in an input or in the merged result.
        public let nonFiniteTensors: [String]

        /// Merged tensors whose strategy fell back to another method (zero std, missing target).
        public var fallbacks: [String] {
            zip(plan.items, results).compactMap { item, result in result?.fallback == true ? item.name : nil }
        }

        /// Name, dtype and method of every tensor, for `--format table`.
        public var table: String {
            var table = Table(headers: ["name", "dtype", "method"], numericColumns: [])
            for (item, result) in zip(plan.items, results) {
                let method: String
                switch item.action {
                case .copy(let reason): method = "copy: \(reason)"
                case .merge: method = result?.method ?? "merge"
                }
                table.add([item.name, item.output.dtype.rawValue, method])
            }
            return table.text
        }

        public var json: JSON {
            .object(Merger.reportHeader(prepared, output: output) + [
                ("tensors", .array(zip(plan.items, results).map { item, result in
                    var fields: [(String, JSON)] = [("name", .string(item.name)), ("dtype", .string(item.output.dtype.rawValue))]
                    switch item.action {
                    case .copy(let reason): fields.append(("method", .string("copy: \(reason)")))
                    case .merge: fields.append(("method", .string(result?.method ?? "merge")))
                    }
                    if let fused = result?.fused { fields.append(("fused", fused.json)) }
                    fields += result?.details ?? []
                    return .object(fields)
                })),
            ])
        }
    }

    /// A checked merge: the plan, the strategy prepared on it, and its context.
    public struct Prepared: Sendable {
        public let plan: MergePlan
        public let strategy: any MergeStrategy
        public let context: MergeContext
        /// The inputs and the base as the user named them (a directory, not its weights file).
        public let inputNames: [String]
        public let baseName: String?
    }

    /// Checks every input, the base, every extra file and the output, without writing: the
    /// `--dry-run` plan.
    ///
    /// - Parameter strategy: a strategy type outside the registry (else `request.strategy` names one).
    public static func prepare(_ request: Request, strategy: (any MergeStrategy.Type)? = nil) throws -> Prepared {
        guard let strategyType = strategy ?? Strategies.named(request.strategy) else {
            throw WSAMergeError.usage("unknown strategy '\(request.strategy)' (known: \(Strategies.names.joined(separator: ", ")))")
        }
        let declaration = strategyType.declaration
        let method = declaration.identifier
        if let dtype = request.dtype, !DType.targets.contains(dtype) {
            throw WSAMergeError.hinted(.usage("cannot write merged values as \(dtype.rawValue)"), .outputDType)
        }
        if let (key, _) = request.extraMetadata.first(where: { $0.0.hasPrefix("wsamerge.") }) {
            throw WSAMergeError.usage("metadata key '\(key)': keys starting with 'wsamerge.' are the merge's provenance, written by wsamerge")
        }
        // Roles: the base, the inputs, the extra files.
        var inputPaths = request.inputs
        var basePath = request.base
        switch declaration.base {
        case .required where basePath == nil:
            throw WSAMergeError.usage("\(method) needs a base model (the model the inputs were fine-tuned from)")
        case .none where basePath != nil:
            throw WSAMergeError.usage("\(method) takes no base model")
        case .input:
            if let path = basePath { inputPaths.insert(path, at: 0) }
            basePath = nil
        default:
            break
        }
        if let problem = declaration.inputCountProblem(inputPaths.count) { throw WSAMergeError.usage(problem) }
        for (role, paths) in request.files where !declaration.files.contains(where: { $0.name == role }) || paths.isEmpty {
            if paths.isEmpty { continue }
            throw WSAMergeError.usage("\(method) reads no \(role) file" + (declaration.files.isEmpty ? ""
                : " (it reads: \(declaration.files.map(\.name).joined(separator: ", ")))"))
        }
        var files: [String: [Checkpoint]] = [:]
        var paths: [String: String] = [:]
        for role in declaration.files {
            let given = request.files[role.name] ?? []
            switch role.scope {
            case .perInput:
                guard !given.isEmpty || !role.required else {
                    throw WSAMergeError.hinted(.usage("\(method) needs one \(role.name) file per input"), .file(role.name))
                }
                guard given.isEmpty || given.count == inputPaths.count else {
                    throw WSAMergeError.hinted(.usage("\(method): \(given.count) \(role.name) file(s) for \(inputPaths.count) inputs"),
                                               .file(role.name))
                }
            case .shared:
                guard !given.isEmpty || !role.required else {
                    throw WSAMergeError.hinted(.usage("\(method) needs a \(role.name) file"), .file(role.name))
                }
                guard given.count <= 1 else { throw WSAMergeError.usage("\(method) reads one \(role.name) file") }
                if let path = given.first { paths[role.name] = path }
            }
        }
        let strip = request.stripPrefixes
        let inputs = try request.opened ?? CheckpointReader.open(inputPaths, stripping: strip)
        let base = try request.openedBase ?? basePath.map { try CheckpointReader.open($0).stripping(strip) }
        for role in declaration.files where role.scope == .perInput {
            if let given = request.files[role.name], !given.isEmpty { files[role.name] = try CheckpointReader.open(given, stripping: strip) }
        }
        let parameters = try ResolvedParameters(declaration, settings: request.parameters, inputCount: inputs.count, inputNames: inputPaths,
                                                tensorNames: (base ?? inputs[0]).tensors.map(\.name), layerPositions: request.layerPositions)
        try request.output.precheck(inputs: identities(models: (base.map { [$0] } ?? []) + inputs, files: files, paths: paths)
            .union(request.otherReads.compactMap { FileIdentity(path: $0) }))
        let plan = try MergePlan(inputs: inputs, base: base, filter: request.filter, onMissing: request.onMissing,
                                 outputDType: request.dtype, gaps: request.gaps)
        try parameters.requireEverywhere(plan)
        // `--on-missing union`: a tensor no input holds is the base's (below); one that fewer
        // inputs hold than the method merges cannot be merged.
        for item in plan.items where item.action == .merge && !item.sources.isEmpty && item.sources.count < declaration.inputs.lowerBound {
            let lacking = plan.inputs.indices.first { k in !item.sources.contains { $0.input == k } }!
            throw WSAMergeError.malformed(file: plan.inputs[lacking].path, tensor: item.name,
                                          reason: "missing, and \(method) needs the tensor in at least \(declaration.inputs.lowerBound) inputs (\(item.sources.count) hold it)")
        }
        try request.output.layout.checkNames(plan.items.map(\.output), file: request.output.path)
        let context = MergeContext(plan: plan, parameters: parameters, files: files, paths: paths, jobs: request.jobs)
        return Prepared(plan: plan, strategy: try strategyType.init(context), context: context, inputNames: inputPaths, baseName: basePath)
    }

    /// Runs the merge and puts the output in place; nothing appears at `-o` unless it succeeds.
    /// `companions` writes the files that go beside a directory output's weights (see
    /// `ModelDirectoryOutput.files`), which appear with them.
    public static func run(_ request: Request, strategy: (any MergeStrategy.Type)? = nil, progress: Progress? = nil,
                           companions: ((Report) throws -> [OutputFile])? = nil) throws -> Report {
        let prepared = try prepare(request, strategy: strategy)
        let plan = prepared.plan
        let merger = try prepared.strategy.measured()
        let metadata = outputMetadata(request, prepared: prepared)
        let writer = try ModuleRoutingWriter.make(request.output, tensors: plan.items.map(\.output), metadata: metadata,
                                                  inputs: identities(models: plan.models, files: prepared.context.files, paths: prepared.context.paths),
                                                  modules: plan.models.first { !$0.modules.isEmpty }?.modules ?? [])
        progress?.start(tensors: plan.items.count, bytes: plan.items.reduce(0) { $0 + $1.output.byteCount })
        var results: [TensorMergeResult?] = []
        var nonFinite: [String] = []
        for item in plan.items {
            switch item.action {
            case .copy:
                if let base = plan.base, let index = item.base {
                    try Converter.copy(try base.reader(for: index), to: writer)
                } else {
                    let source = item.sources[0]
                    try Converter.copy(try plan.inputs[source.input].reader(for: source.index), to: writer)
                }
                results.append(nil)
            case .merge where item.sources.isEmpty:
                // Only the base holds it (`--on-missing union`): there is nothing to merge into it.
                try Converter.recode(try plan.base!.reader(for: item.base!), to: item.output.dtype, writer: writer, jobs: request.jobs)
                results.append(TensorMergeResult(method: "base (no input holds it)"))
            case .merge:
                let watch = EncodedNonFiniteWatch(writer, dtype: item.output.dtype)
                var result = try merger.merge(item, output: Lockstep.Output(dtype: item.output.dtype, writer: watch))
                result.nonFinite = result.nonFinite || watch.found
                if result.nonFinite {
                    if request.strict {
                        // Find the input that holds them (only on this error path); when none
                        // does, the merged values themselves overflowed.
                        var holders = item.sources.map { (plan.inputs[$0.input], $0.index) }
                        if let base = plan.base, let index = item.base { holders.insert((base, index), at: 0) }
                        for (checkpoint, index) in holders {
                            let m = try TensorStatistics.compute(try checkpoint.reader(for: index), jobs: request.jobs).moments
                            if let m, m.nan + m.inf > 0 {
                                throw WSAMergeError.malformed(file: checkpoint.path, tensor: item.name,
                                                              reason: "NaN or infinite values (refused in strict mode)")
                            }
                        }
                        throw WSAMergeError.malformed(file: request.output.path, tensor: item.name,
                                                      reason: "the merged values are NaN or infinite as \(item.output.dtype.rawValue) though every input is finite (refused in strict mode; check the weights and parameters, or the output dtype)")
                    }
                    nonFinite.append(item.name)
                }
                results.append(result)
            }
            progress?.tensorDone(bytes: item.output.byteCount)
        }
        let report = Report(prepared: prepared, output: request.output.path, results: results, nonFiniteTensors: nonFinite)
        if let companions { writer.add(companions: try companions(report)) }
        try writer.finish()
        progress?.finish()
        return report
    }

    /// Every file the merge reads — models, base, Fisher files, the target scope — which `-o` may not name.
    static func identities(models: [Checkpoint], files: [String: [Checkpoint]], paths: [String: String]) -> Set<FileIdentity> {
        var result = (models + files.values.joined()).reduce(into: Set<FileIdentity>()) { $0.formUnion($1.identities) }
        for path in paths.values {
            if let identity = FileIdentity(path: path) { result.insert(identity) }
        }
        return result
    }

    /// The first model's metadata plus provenance: `wsamerge.version`, `.strategy`, `.inputs`
    /// (as given), `.base`, `.weights`, `.parameters` (every parameter in effect), the
    /// strategy's own keys, `.dtype`, `.recipe`, then `--metadata` pairs.
    static func outputMetadata(_ request: Request, prepared: Prepared) -> [String: String] {
        let plan = prepared.plan
        var metadata = plan.models[0].metadata
        metadata["wsamerge.version"] = WSAMergeVersion.current
        metadata["wsamerge.strategy"] = prepared.context.parameters.declaration.identifier
        metadata["wsamerge.inputs"] = JSON.array(prepared.inputNames.map { .string($0) }).text
        if let base = prepared.baseName { metadata["wsamerge.base"] = base }
        if let weights = reportWeights(prepared) { metadata["wsamerge.weights"] = weights.text }
        metadata["wsamerge.parameters"] = prepared.context.parameters.json.text
        for (role, files) in prepared.context.files { metadata["wsamerge.\(role)"] = JSON.array(files.map { .string($0.path) }).text }
        for (role, path) in prepared.context.paths { metadata["wsamerge.\(role)"] = path }
        for (key, value) in prepared.strategy.provenance { metadata["wsamerge.\(key)"] = value }
        if let dtype = request.dtype { metadata["wsamerge.dtype"] = dtype.rawValue }
        if let recipe = request.recipe { metadata["wsamerge.recipe"] = recipe }
        for (key, value) in request.extraMetadata { metadata[key] = value }
        return metadata
    }

    /// The merge-wide weights for the report: normalised for the methods that normalise them
    /// (average, fisher, wsa), as given otherwise; nil when the method has none or they vary by tensor.
    static func reportWeights(_ prepared: Prepared) -> JSON? {
        let parameters = prepared.context.parameters
        guard parameters.declaration.parameter("weight") != nil, let item = prepared.plan.items.first else { return nil }
        let given = parameters.settings.perInput.first { $0.name == "weight" }?.settings ?? []
        let shared = parameters.settings.shared.first { $0.name == "weight" }?.setting
        guard (given.compactMap { $0 } + [shared].compactMap { $0 }).allSatisfy(\.isConstant) else { return nil }
        let raw = (0..<parameters.inputCount).map { try? parameters.number("weight", input: $0, tensor: item.name) }
        guard raw.allSatisfy({ $0 != nil }) else { return nil }
        let weights = parameters.declaration.normalizesWeights
            ? ((try? Weights.normalized(raw.map { $0! }, method: parameters.declaration.identifier, tensor: item.name)) ?? raw.map { $0! })
            : raw.map { $0! }
        return .array(weights.map { .double($0) })
    }

    /// The fields the report and the dry-run plan share.
    static func reportHeader(_ prepared: Prepared, output: String) -> [(String, JSON)] {
        var fields: [(String, JSON)] = [
            ("output", .string(output)),
            ("strategy", .string(prepared.context.parameters.declaration.identifier)),
            ("inputs", .array(prepared.inputNames.map { .string($0) })),
        ]
        if let base = prepared.baseName { fields.append(("base", .string(base))) }
        if let weights = reportWeights(prepared) { fields.append(("weights", weights)) }
        fields.append(("parameters", prepared.context.parameters.json))
        fields.append(("tensor_count", .int(prepared.plan.items.count)))
        return fields
    }

    /// The `--dry-run` document: what would be written, tensor by tensor.
    public static func dryRunJSON(_ prepared: Prepared, output: String) -> JSON {
        .object([("dry_run", .bool(true))] + reportHeader(prepared, output: output) + [
            ("tensors", .array(prepared.plan.items.map { item in
                .object([
                    ("name", .string(item.name)), ("dtype", .string(item.output.dtype.rawValue)),
                    ("shape", .array(item.output.shape.map { .int($0) })), ("action", .string(plannedAction(item))),
                    ("inputs", .int(item.sources.count + (item.base == nil ? 0 : 1))),
                ])
            })),
        ])
    }

    /// The plan as `--format table` shows it: name, dtype, shape and action of every tensor.
    public static func dryRunTable(_ prepared: Prepared) -> String {
        var table = Table(headers: ["name", "dtype", "shape", "action"], numericColumns: [])
        for item in prepared.plan.items {
            table.add([item.name, item.output.dtype.rawValue, "[" + item.output.shape.map(String.init).joined(separator: ", ") + "]",
                       plannedAction(item)])
        }
        return table.text
    }

    /// What the merge will do with `item`: merge it, take the base's (no input holds it), or copy it.
    static func plannedAction(_ item: MergePlan.Item) -> String {
        switch item.action {
        case .merge: item.sources.isEmpty ? "base (no input holds it)" : "merge"
        case .copy(let reason): "copy: \(reason)"
        }
    }
}

/// Passes a tensor's encoded bytes on to `writer` and notes whether any is infinite or NaN: a
/// merged value finite in float64 can overflow the output dtype (F32, F16, BF16) when rounded.
final class EncodedNonFiniteWatch: CheckpointWriter {
    let writer: any CheckpointWriter
    /// The kernels' kind of the output dtype, or nil when it is not watched (F64 values are
    /// checked before they are written; F8 has no infinity).
    let kind: Int32?
    private(set) var found = false

    init(_ writer: any CheckpointWriter, dtype: DType) {
        self.writer = writer
        kind = dtype == .F64 ? nil : dtype.rawKind
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        if let kind, !found, let base = bytes.baseAddress {
            let width = kind == Int32(WSK_F32) ? 4 : 2
            found = wsk_encoded_nonfinite(base, bytes.count / width, kind) != 0
        }
        try writer.write(bytes)
    }

    func finish() throws { try writer.finish() }
    func add(companions: [OutputFile]) { writer.add(companions: companions) }
}
