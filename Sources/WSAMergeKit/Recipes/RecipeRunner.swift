/// Turns a recipe into a `Merger.Request` and a request back into a recipe, so a recipe and
/// the equivalent command line give the same merge and the same bytes.
public enum RecipeRunner {
    /// The strategy a recipe's `merge_method` names: the registry's, else wsamerge's layer
    /// stacking for `passthrough`.
    public static func strategy(named name: String) -> (any MergeStrategy.Type)? {
        Strategies.named(name) ?? (name == StackedLayers.declaration.identifier ? StackedLayers.self : nil)
    }

    /// Every `merge_method` a recipe may name.
    public static var methodNames: [String] {
        var names = Strategies.names
        if !names.contains(StackedLayers.declaration.identifier) { names.append(StackedLayers.declaration.identifier) }
        return names
    }

    /// Whether the recipe stacks layer ranges into a deeper model (`passthrough` with slices).
    public static func stacks(_ recipe: Recipe) -> Bool {
        !recipe.slices.isEmpty && strategy(named: recipe.mergeMethod)?.declaration.identifier == StackedLayers.declaration.identifier
    }

    /// The merge the recipe describes, written to `output`. Model references are resolved (a
    /// Hugging Face id to its cached snapshot); slices are assembled into stacked checkpoints.
    public static func request(_ document: RecipeDocument, output: OutputOptions,
                               resolver: ModelResolver = .environment) throws -> Merger.Request {
        let recipe = document.recipe
        guard let strategy = strategy(named: recipe.mergeMethod) else {
            throw document.error("merge_method", "unknown method '\(recipe.mergeMethod)'")
        }
        let declaration = strategy.declaration
        func resolve(_ reference: String, _ path: String) throws -> String { try document.resolve(reference, at: path, with: resolver) }
        var request = Merger.Request(inputs: [], strategy: recipe.mergeMethod, output: output)
        request.otherReads = document.file == "<stdin>" ? [] : [document.file]
        var columns: [[Recipe.Source?]] = []  // with slices: input k's source in each slice
        if recipe.slices.isEmpty {
            var models = recipe.models
            var offset = 0
            switch declaration.base {
            case .input:
                if let base = recipe.baseModel, !models.contains(where: { $0.model == base }) {
                    request.base = try resolve(base, "base_model")
                    offset = 1
                }
            case .required, .optional:
                if let base = recipe.baseModel {
                    request.base = try resolve(base, "base_model")
                    models.removeAll { $0.model == base }
                }
            case .none:
                break
            }
            let indices = recipe.models.indices.filter { recipe.models[$0].model != recipe.baseModel || declaration.base == .input || declaration.base == .none }
            request.inputs = try indices.map { try resolve(recipe.models[$0].model, "models[\($0)].model") }
            var names: [String] = []
            for model in models { for setting in model.parameters where !names.contains(setting.name) { names.append(setting.name) } }
            for name in names {
                let settings: [ParameterSetting?] = Array(repeating: nil, count: offset)
                    + models.map { model in model.parameters.first { $0.name == name }?.setting }
                request.parameters.set(name, perInput: settings)
            }
            for role in declaration.files where role.scope == .perInput {
                let paths = models.compactMap { model in model.files.first { $0.role == role.name }?.path }
                if !paths.isEmpty {
                    guard paths.count == models.count else {
                        throw document.error("models", "give '\(role.name)' for every model or for none")
                    }
                    request.files[role.name] = paths
                }
            }
        } else {
            columns = try assembleSlices(document, declaration: declaration, into: &request, resolve: resolve)
        }
        for setting in recipe.parameters { request.parameters.set(setting.name, setting.setting) }
        if !recipe.slices.isEmpty { addSliceParameters(recipe, declaration: declaration, columns: columns, to: &request.parameters) }
        // mergekit's linear has no default weight: a tensor no filter gives one is refused.
        if declaration.identifier == AverageStrategy.declaration.identifier { request.parameters.withoutDefault.insert("weight") }
        for file in recipe.files { request.files[file.role] = [file.path] }
        for (key, patterns) in [("include", recipe.include), ("exclude", recipe.exclude)] {
            for pattern in patterns where (try? Regex(pattern)) == nil {
                throw document.error(key, "'\(pattern)' is not a valid regular expression")
            }
        }
        request.filter = try TensorFilter(include: recipe.include, exclude: recipe.exclude)
        request.onMissing = recipe.onMissing ?? .error
        request.stripPrefixes = recipe.stripPrefix
        request.dtype = recipe.outputDType
        request.extraMetadata = recipe.metadata.map { ($0.key, $0.value) }
        request.recipe = recipe.render()
        return request
    }

    /// The files written beside a directory output: the recipe, and the config and tokenizer
    /// files of a model directory: `explicit` (`--copy-files-from`) unless `disabled`
    /// (`--no-copy-files`); else the base's when the recipe says `tokenizer_source: base` (which
    /// needs a directory output and a model directory); else, as for the command line, those of
    /// the base (else the first slice's own base), or of the first model (of the first slice),
    /// when it is a model directory; with `chat_template`, the copied tokenizer files get that
    /// template. Checked now, written after the merge.
    public static func outputFiles(_ document: RecipeDocument, request: Merger.Request, explicit: String?, disabled: Bool,
                                   resolver: ModelResolver = .environment) throws -> ModelDirectoryOutput {
        let recipe = document.recipe
        func resolve(_ reference: String, _ path: String) throws -> String { try document.resolve(reference, at: path, with: resolver) }
        let source: String?
        if recipe.tokenizerSource != nil, explicit == nil, !disabled, let base = recipe.baseModel {
            source = try resolve(base, "base_model")
        } else {
            var candidates: [String] = []
            if let base = recipe.baseModel { candidates.append(try resolve(base, "base_model")) }
            if recipe.baseModel == nil, let base = recipe.slices.first?.baseModel { candidates.append(try resolve(base, "slices[0].base_model")) }
            if let first = recipe.models.first {
                candidates.append(try resolve(first.model, "models[0].model"))
            } else if let first = recipe.slices.first?.sources.first {
                candidates.append(try resolve(first.model, "slices[0].sources[0].model"))
            }
            source = ModelDirectoryOutput.source(among: candidates, output: request.output, explicit: explicit, disabled: disabled)
        }
        var files: ModelDirectoryOutput
        do { files = try ModelDirectoryOutput(request, source: source) } catch WSAMergeError.usage(let message) where recipe.tokenizerSource != nil && explicit == nil {
            throw document.error("tokenizer_source", message)
        }
        if let setting = recipe.chatTemplate {
            var models: [String] = []
            for (reference, path) in modelReferences(recipe) {
                let model = try resolve(reference, path)
                if !models.contains(model) { models.append(model) }
            }
            do {
                files = try files.setting(chatTemplate: setting, models: models)
            } catch WSAMergeError.usage(let message) {
                throw document.error("chat_template", message)
            }
        }
        return files
    }

    /// Every model the recipe names, with its key path: the base, then the models (or each
    /// slice's sources) in order.
    static func modelReferences(_ recipe: Recipe) -> [(String, String)] {
        var references: [(String, String)] = []
        if let base = recipe.baseModel { references.append((base, "base_model")) }
        for (i, model) in recipe.models.enumerated() { references.append((model.model, "models[\(i)].model")) }
        for (i, slice) in recipe.slices.enumerated() {
            for (j, source) in slice.sources.enumerated() { references.append((source.model, "slices[\(i)].sources[\(j)].model")) }
        }
        return references
    }

    /// Slices: stacked into one model for `passthrough`; for the other methods, input k is the
    /// stack of every slice's k-th source (the base's sources, when the method has a base, stack
    /// into the base), so each slice's layers merge with the layers beside them; a slice with
    /// fewer sources leaves the inputs past its count a gap (`InputGaps`: its layers are merged
    /// over the sources it has, as mergekit merges each slice). Returns each input's sources,
    /// slice by slice (nil in a gap).
    static func assembleSlices(_ document: RecipeDocument, declaration: StrategyDeclaration, into request: inout Merger.Request,
                               resolve: (String, String) throws -> String) throws -> [[Recipe.Source?]] {
        let recipe = document.recipe
        var opened: [String: Checkpoint] = [:]
        func open(_ source: Recipe.Source, _ path: String) throws -> LayerStack.Part {
            let resolved = try resolve(source.model, "\(path).model")
            let checkpoint: Checkpoint
            if let known = opened[resolved] { checkpoint = known } else {
                do { checkpoint = try CheckpointReader.open([resolved], stripping: recipe.stripPrefix)[0] } catch let error as WSAMergeError {
                    if case .missingInput = error { throw document.error("\(path).model", wrapping: error) }
                    throw error
                }
                opened[resolved] = checkpoint
            }
            let layers = LayerStack.layers(of: checkpoint)
            if !source.layerRange.allSatisfy({ layers.contains($0) }) {
                let held = layers.isEmpty ? "no numbered layers (layers.N, h.N, blocks.N)"
                    : layers == Array(0..<layers.count) ? "layers 0 to \(layers.count - 1)" : "layers \(layers.map(String.init).joined(separator: ", "))"
                throw document.error("\(path).layer_range",
                                     "[\(source.layerRange.lowerBound), \(source.layerRange.upperBound)] is not within '\(source.model)', which has \(held)")
            }
            return LayerStack.Part(checkpoint, layers: source.layerRange)
        }
        func name(_ parts: [(Recipe.Source)]) -> String {
            parts.map { "\($0.model)[\($0.layerRange.lowerBound):\($0.layerRange.upperBound)]" }.joined(separator: " + ")
        }
        if let role = declaration.files.first(where: { $0.scope == .perInput && $0.required }) {
            throw document.error("slices", "\(declaration.identifier) reads a \(role.name) file per model, which slices cannot give; use models")
        }
        if stacks(recipe) {
            for (i, slice) in recipe.slices.enumerated() where slice.sources.count != 1 {
                throw document.error("slices[\(i)].sources", "passthrough takes one source per slice (got \(slice.sources.count))")
            }
            let sources = recipe.slices.map { $0.sources[0] }
            let parts = try sources.enumerated().map { i, source in try open(source, "slices[\(i)].sources[0]") }
            let stacked = try LayerStack.stack(parts, path: name(sources))
            request.opened = [stacked]
            request.inputs = [stacked.path]
            request.layerPositions = LayerStack.positions(sources.map(\.layerRange.count))
            return [sources]
        }
        let usesBase = declaration.base == .required || declaration.base == .optional
        var baseSources: [(Recipe.Source, String)] = []
        // Input k stacks each slice's k-th source that is not the base; a slice with fewer
        // sources leaves a gap in the inputs past its count (merged over its own sources).
        var inputSources: [[(Recipe.Source, String)?]] = []
        for (i, slice) in recipe.slices.enumerated() {
            var others: [(Recipe.Source, String)] = []
            var base: (Recipe.Source, String)?
            for (j, source) in slice.sources.enumerated() {
                let path = "slices[\(i)].sources[\(j)]"
                if usesBase, base == nil, source.model == recipe.baseModel(ofSlice: i) { base = (source, path) } else { others.append((source, path)) }
            }
            if usesBase, let name = recipe.baseModel(ofSlice: i) {
                guard let base else { throw document.error("slices[\(i)].sources", "no source of this slice is the base_model '\(name)'") }
                baseSources.append(base)
            }
            while inputSources.count < others.count { inputSources.append(Array(repeating: nil, count: i)) }
            for k in inputSources.indices { inputSources[k].append(k < others.count ? others[k] : nil) }
        }
        // An input whose only sources are empty slices' (`[a, a]`) holds no tensor: none.
        inputSources.removeAll { column in
            column.first! == nil && column.last! == nil && column.allSatisfy { ($0?.0.layerRange.isEmpty ?? true) }
        }
        let regions = sliceRegions(recipe), lengths = recipe.slices.map { $0.sources[0].layerRange.count }
        var inputs: [Checkpoint] = []
        for (k, column) in inputSources.enumerated() {
            let parts = try column.map { try $0.map { try open($0.0, $0.1) } }
            if column.contains(where: { $0 == nil }) {
                request.gaps[k] = InputGaps(layers: column.indices.filter { column[$0] == nil }.map { regions[$0].layers },
                                            beforeLayers: column.first! == nil, afterLayers: column.last! == nil)
            }
            inputs.append(try LayerStack.stack(parts, gaps: column.contains { $0 == nil } ? lengths : [],
                                               path: name(column.compactMap { $0?.0 })))
        }
        if !baseSources.isEmpty {
            let base = try LayerStack.stack(try baseSources.map { try open($0.0, $0.1) }, path: name(baseSources.map(\.0)))
            request.openedBase = base
            request.base = base.path
        }
        request.opened = inputs
        request.inputs = inputs.map(\.path)
        request.layerPositions = LayerStack.positions(lengths)
        return inputSources.map { $0.map { $0?.0 } }
    }

    /// Each slice's output layers as `LayerStack.stack` numbers them, the first and last marked.
    static func sliceRegions(_ recipe: Recipe) -> [(layers: Range<Int>, first: Bool, last: Bool)] {
        var next = 0
        return recipe.slices.enumerated().map { i, slice in
            let count = slice.sources[0].layerRange.count
            defer { next += count }
            return (next..<next + count, i == 0, i == recipe.slices.count - 1)
        }
    }

    /// The parameters of slices and their sources, as mergekit resolves them: per tensor, the
    /// source's setting, then its slice's, then the top-level one (`parameters` holds the top
    /// level already), the first that gives a value. A per-input parameter's filters match the
    /// input's own tensor name (its layer as numbered in its model), a shared one's the output's.
    static func addSliceParameters(_ recipe: Recipe, declaration: StrategyDeclaration, columns: [[Recipe.Source?]],
                                   to parameters: inout ParameterSettings) {
        let regions = sliceRegions(recipe)
        var names: [String] = parameters.shared.map(\.name)
        for slice in recipe.slices {
            for setting in slice.parameters + slice.sources.flatMap(\.parameters) where !names.contains(setting.name) { names.append(setting.name) }
        }
        for name in names {
            guard let parameter = declaration.parameter(name) else { continue }  // refused when resolved
            let topLevel = parameters.shared.first { $0.name == name }?.setting
            func setting(_ source: Recipe.Source?, in i: Int) -> SliceSetting {
                let region = regions[i], slice = recipe.slices[i]
                return SliceSetting(layers: region.layers, first: region.first, last: region.last, inputLayers: source?.layerRange,
                                    settings: [source?.parameters.first { $0.name == name }?.setting,
                                               slice.parameters.first { $0.name == name }?.setting, topLevel].compactMap { $0 })
            }
            let inSlices = recipe.slices.contains { slice in (slice.parameters + slice.sources.flatMap(\.parameters)).contains { $0.name == name } }
            var filtered = false
            if case .filtered = topLevel { filtered = true }
            guard inSlices || (filtered && parameter.scope == .perInput) else { continue }  // the top level's alone, by name or not
            if parameter.scope == .perInput {
                parameters.shared.removeAll { $0.name == name }
                parameters.set(name, perInput: columns.map { column in .sliced(column.indices.map { setting(column[$0], in: $0) }) })
            } else {
                parameters.set(name, .sliced(recipe.slices.indices.map { setting(nil, in: $0) }))
            }
        }
    }
}

extension RecipeDocument {
    /// The model `reference` at key `path` resolved (a Hugging Face id to its cached snapshot);
    /// an error names the recipe's line.
    func resolve(_ reference: String, at path: String, with resolver: ModelResolver) throws -> String {
        do { return try resolver.resolve(reference) } catch let error as WSAMergeError {
            throw self.error(path, wrapping: error)
        }
    }

    /// The recipe with `seed` as its parameter `seed`: mergekit takes the seed on its command line
    /// (`--random-seed`) beside the recipe, wsamerge writes it into the recipe, so the recipe
    /// written beside the output replays the same draws. A recipe that gives its own seed, or a
    /// method that draws nothing, is refused.
    public func seeded(_ seed: Int) throws -> RecipeDocument {
        var recipe = recipe
        guard !recipe.parameters.contains(where: { $0.name == "seed" }) else {
            throw WSAMergeError.usage("the recipe gives its own seed: drop --seed or the recipe's seed")
        }
        guard let parameter = RecipeRunner.strategy(named: recipe.mergeMethod)?.declaration.parameter("seed") else {
            throw WSAMergeError.usage("\(recipe.mergeMethod) draws nothing at random, so it takes no --seed")
        }
        recipe.parameters.append(Recipe.Setting("seed", .value(ParameterValue(parsing: String(seed), as: parameter.kind))))
        return RecipeDocument(recipe: recipe, file: file, lines: lines)
    }
}

extension Recipe {
    /// The recipe equivalent to a command-line request (inputs, base, method, parameters,
    /// files, dtype, missing tensors, metadata). Tensor selection patterns are the caller's to
    /// add (`include`, `exclude`): the request holds them compiled.
    public init(_ request: Merger.Request) throws {
        guard let strategy = RecipeRunner.strategy(named: request.strategy) else {
            throw WSAMergeError.usage("unknown strategy '\(request.strategy)' (known: \(Strategies.names.joined(separator: ", ")))")
        }
        let declaration = strategy.declaration
        self.init(mergeMethod: request.strategy)
        baseModel = request.base
        var inputs = request.inputs
        if declaration.base == .input, let base = request.base { inputs.insert(base, at: 0) }
        models = inputs.map { Model($0) }
        for (name, settings) in request.parameters.perInput {
            guard settings.count == models.count else {
                throw WSAMergeError.hinted(.usage("\(declaration.identifier): parameter '\(name)' has \(settings.count) values for \(models.count) inputs"),
                                           .parameter(name))
            }
            for (i, setting) in settings.enumerated() {
                if let setting { models[i].parameters.append(Setting(name, setting)) }
            }
        }
        parameters = request.parameters.shared.map { Setting($0.name, $0.setting) }
        // mergekit's linear has no default weight: write the command line's uniform one.
        if declaration.identifier == AverageStrategy.declaration.identifier, !request.parameters.names.contains("weight") {
            parameters.insert(Setting("weight", .value(.number(1))), at: 0)
        }
        for role in declaration.files {
            guard let paths = request.files[role.name], !paths.isEmpty else { continue }
            switch role.scope {
            case .perInput:
                guard paths.count == models.count else {
                    throw WSAMergeError.hinted(.usage("\(declaration.identifier): \(paths.count) \(role.name) file(s) for \(models.count) inputs"),
                                               .file(role.name))
                }
                for (i, path) in paths.enumerated() { models[i].files.append(File(role.name, path)) }
            case .shared:
                files.append(File(role.name, paths[0]))
            }
        }
        // No input besides the base (the output is the base): a recipe needs models, so the base
        // is listed, as mergekit recipes often do (a model equal to base_model is no input).
        if models.isEmpty, let base = request.base { models = [Model(base)] }
        // mergekit's `dtype` is the output dtype when no `out_dtype` is given.
        dtype = request.dtype
        onMissing = request.onMissing == .error ? nil : request.onMissing
        stripPrefix = request.stripPrefixes
        metadata = request.extraMetadata.map { MetadataEntry($0.0, $0.1) }
    }
}
