import ArgumentParser
import WSAMergeKit

extension WSAMerge {
    struct Fuse: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Merge checkpoints with a strategy and print a JSON report.",
            discussion: """
                Every input is checked first (tensor names, shapes, dtypes, the base, extra files, parameters, \
                output path); nothing is written unless all checks pass, and the output appears only when \
                complete. All strategies accumulate in float64 and round once to the output dtype. \
                Strategies and their parameters (`wsamerge strategies` lists them as JSON):
                \(strategyHelp)
                """)

        @Argument(help: "Checkpoints to merge (any mix of formats).")
        var inputs: [String] = []

        @Option(help: ArgumentHelp("Merge as a mergekit-format YAML recipe says (- reads it from stdin); it gives the models, method and parameters.",
                                   valueName: "file.yml"))
        var recipe: String?

        @Flag(name: .customLong("print-recipe"), help: "Print the merge as a recipe (YAML) instead of merging: replaying it with --recipe gives the same bytes.")
        var printRecipe = false

        @Option(help: "Merge strategy (see below; default: average).")
        var strategy: StrategyName?

        @Option(help: "The base model the inputs were fine-tuned from.")
        var base: String?

        @Option(parsing: .unconditional,
                help: "Input weights w0,w1,… (the per-input parameter 'weight'; any sign: --weights -1,2). Default: uniform where the method allows.")
        var weights: WeightList?

        @Option(name: .customLong("param"), help: ArgumentHelp("A strategy parameter: NAME=VALUE, or NAME=v0,v1,… for one value per input (repeatable).",
                                                               valueName: "name=value"))
        var parameters: [ParameterAssignment] = []

        @Option(parsing: .unconditional, help: "Seed of the random draws (the parameter 'seed'; with --recipe, what mergekit's --random-seed is).")
        var seed: Int?

        @Option(help: "Output dtype: keep (each tensor keeps the base's, else the first input's dtype), F64, F32, F16 or BF16.")
        var dtype: MergeDType = .keep

        @Option(name: .customLong("on-missing"), help: "Tensors missing from some inputs: error, intersection or union.")
        var onMissing: OnMissing = .error

        @Option(help: "A Fisher checkpoint (strategy fisher): give it once per input, in input order.")
        var fisher: [String] = []

        @Option(name: .customLong("target-scope"), help: "WSA target scopes from a `wsamerge scope -o` file (strategy wsa).")
        var targetScope: String?

        @Option(name: .customLong("fisher-epsilon"), help: "Same as --param fisher_epsilon=X.")
        var fisherEpsilon: Double?

        @Option(name: .customLong("fisher-normalize"), help: "Same as --param fisher_normalize=X.")
        var fisherNormalize: FisherNormalize?

        @Option(name: .customLong("scope-fusion"), help: "Same as --param scope_fusion=X.")
        var scopeFusion: ScopeFusion?

        @Option(name: .customLong("wsa-rescale"), help: "Same as --param wsa_rescale=X.")
        var wsaRescale: WSARescale?

        @Option(name: .customLong("wsa-min-rank"), help: "Same as --param wsa_min_rank=N.")
        var wsaMinRank: Int?

        @Option(help: "Extra output metadata key=value (repeatable).")
        var metadata: [String] = []

        @Flag(name: .customLong("dry-run"), help: "Check everything and print the plan; write nothing.")
        var dryRun = false

        @Flag(help: "Refuse NaN or infinite values (in the inputs or the merged result) instead of warning.")
        var strict = false

        @Option(name: .customLong("copy-files-from"), help: "A directory output gets this model directory's config, tokenizer and other non-weight files (default: the base's, else the first input's, when it is a model directory).")
        var copyFilesFrom: String?

        @Flag(name: .customLong("no-copy-files"), help: "A directory output gets the weights and the recipe only.")
        var noCopyFiles = false

        @Option(name: .customLong("chat-template"), help: ArgumentHelp("The chat template the copied tokenizer files get: auto (the one most inputs have), chatml, llama3, mistral, alpaca, exaone, or a Jinja template.", valueName: "NAME"))
        var chatTemplate: String?

        @OptionGroup var output: OutputArguments
        @OptionGroup var common: CommonOptions

        @OptionGroup var reportOptions: ReportOptions

        func validate() throws {
            if copyFilesFrom != nil && noCopyFiles { throw ValidationError("--copy-files-from and --no-copy-files contradict each other") }
            if let chatTemplate {
                do { try ChatTemplate.validate(chatTemplate) } catch WSAMergeError.usage(let message) { throw ValidationError("--chat-template: " + message) }
            }
        }

        func run() throws {
            var request: Merger.Request
            let files: ModelDirectoryOutput
            var recipeName: String?
            if let recipe {
                try checkRecipeAlone()
                var document = try RecipeParser.load(recipe)
                if let seed { document = try document.seeded(seed) }
                if printRecipe { return emit(document.recipe.render()) }
                recipeName = document.file
                request = try RecipeRunner.request(document, output: try output.options())
                request.strict = strict
                request.jobs = common.workerCount
                files = try RecipeRunner.outputFiles(document, request: request, explicit: copyFilesFrom, disabled: noCopyFiles)
            } else {
                request = try makeRequest()
                var recipe = try Recipe(request)
                recipe.include = common.include
                recipe.exclude = common.exclude
                recipe.stripPrefix = common.stripPrefixes
                recipe.chatTemplate = chatTemplate
                if printRecipe {
                    try recipe.requireDistinctModels()
                    return emit(recipe.render())
                }
                request.recipe = recipe.render()
                var planned = try ModelDirectoryOutput(request, source: ModelDirectoryOutput.source(for: request, explicit: copyFilesFrom,
                                                                                                   disabled: noCopyFiles))
                if let chatTemplate {
                    do { planned = try planned.setting(chatTemplate: chatTemplate, models: [request.base].compactMap { $0 } + request.inputs) }
                    catch WSAMergeError.usage(let message) { throw WSAMergeError.usage("--chat-template: " + message) }
                }
                files = planned
            }
            let strategyType = RecipeRunner.strategy(named: request.strategy)
            let report: Merger.Report
            do {
                if dryRun {
                    let prepared = try Merger.prepare(request, strategy: strategyType)
                    switch reportOptions.format {
                    case .json: emit(Merger.dryRunJSON(prepared, output: request.output.path))
                    case .table: emit(Merger.dryRunTable(prepared))
                    }
                    return
                }
                report = try Merger.run(request, strategy: strategyType, progress: Progress.forTerminal(label: "fuse", quiet: common.quiet),
                                        companions: files.files)
            } catch let error as WSAMergeError {
                guard let recipeName else { throw error }
                throw RecipeRunFailure(error: error, file: recipeName)
            }
            warnSummary("have NaN or infinite values (in an input or the merged result)", tensors: report.nonFiniteTensors, quiet: common.quiet)
            warnSummary("fell back from the strategy", tensors: report.fallbacks, quiet: common.quiet)
            switch reportOptions.format {
            case .json: emit(report.json)
            case .table: emit(report.table)
            }
        }

        /// A recipe gives the merge: options that would say it again are refused, not mixed in.
        func checkRecipeAlone() throws {
            let given: [(String, Bool)] = [
                ("inputs", !inputs.isEmpty), ("--strategy", strategy != nil), ("--base", base != nil),
                ("--weights", weights != nil), ("--param", !parameters.isEmpty),
                ("--dtype", dtype != .keep), ("--on-missing", onMissing != .error), ("--fisher", !fisher.isEmpty),
                ("--target-scope", targetScope != nil), ("--fisher-epsilon", fisherEpsilon != nil),
                ("--fisher-normalize", fisherNormalize != nil), ("--scope-fusion", scopeFusion != nil),
                ("--wsa-rescale", wsaRescale != nil), ("--wsa-min-rank", wsaMinRank != nil),
                ("--metadata", !metadata.isEmpty), ("--include", !common.include.isEmpty), ("--exclude", !common.exclude.isEmpty),
                ("--strip-prefix", !common.stripPrefixes.isEmpty), ("--chat-template", chatTemplate != nil),
            ]
            let clashing = given.filter(\.1).map(\.0)
            if !clashing.isEmpty {
                throw ValidationError("--recipe gives the models, method and parameters; drop \(clashing.joined(separator: ", ")) or put it in the recipe (inputs under models, out_dtype, parameters, include, exclude, on_missing, strip_prefix, metadata, chat_template)")
            }
        }

        /// The library request the options describe.
        func makeRequest() throws -> Merger.Request {
            let strategy = strategy ?? StrategyName(argument: "average")!
            let declaration = Strategies.named(strategy.name)!.declaration
            var request = Merger.Request(inputs: try common.resolve(inputs), strategy: strategy.name, output: try output.options())
            request.base = try base.map { try common.resolve([$0])[0] }
            // Each parameter once: a flag and a --param for one parameter, or a repeated --param,
            // would leave one of them silently unused.
            var given: [String: String] = [:]
            func note(_ name: String, _ spelling: String) throws {
                if let first = given[name] { throw ValidationError("\(first) and \(spelling) both set parameter '\(name)'; give it once") }
                given[name] = spelling
            }
            if let weights {
                try note("weight", "--weights")
                try request.parameters.assign("weight", words: weights.words, for: declaration)
            }
            let sugar: [(String, String?)] = [
                ("seed", seed.map { String($0) }),
                ("fisher_epsilon", fisherEpsilon.map { "\($0)" }),
                ("fisher_normalize", fisherNormalize?.rawValue),
                ("scope_fusion", scopeFusion?.rawValue),
                ("wsa_rescale", wsaRescale?.rawValue),
                ("wsa_min_rank", wsaMinRank.map { String($0) }),
            ]
            for (name, text) in sugar {
                guard let text else { continue }
                try note(name, "--" + name.replacingOccurrences(of: "_", with: "-"))
                try request.parameters.assign(name, words: [text], for: declaration)
            }
            for assignment in parameters {
                try note(assignment.name, "--param \(assignment.name)=…")
                try request.parameters.assign(assignment.name, words: assignment.words, for: declaration)
            }
            if !fisher.isEmpty { request.files["fisher"] = fisher }
            if let targetScope { request.files["target_scope"] = [targetScope] }
            request.filter = try common.filter()
            request.onMissing = onMissing
            request.dtype = dtype.dtype
            request.extraMetadata = try metadata.map { pair in
                guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                    throw ValidationError("--metadata expects key=value, got '\(pair)'")
                }
                return (String(pair[..<eq]), String(pair[pair.index(after: eq)...]))
            }
            request.strict = strict
            request.stripPrefixes = common.stripPrefixes
            request.jobs = common.workerCount
            return request
        }
    }
}

/// Every strategy with its parameters, for `fuse --help` and the man page.
let strategyHelp: String = Strategies.all.map { strategy in
    let d = strategy.declaration
    var lines = ["\(d.identifier)\(d.aliases.isEmpty ? "" : " (alias \(d.aliases.joined(separator: ", ")))"): \(d.summary)"]
    switch d.base {
    case .required: lines.append("  --base required")
    case .optional: lines.append("  --base optional")
    case .input: lines.append("  --base, if given, is merged as the first input")
    case .none: break
    }
    for file in d.files {
        lines.append("  --\(String(file.name.map { $0 == "_" ? "-" : $0 })) (\(file.scope == .perInput ? "one per input" : "one file")\(file.required ? ", required" : "")): \(file.help)")
    }
    for p in d.parameters {
        let value = p.defaultValue.map { "default \($0)" } ?? "required"
        lines.append("  \(p.name) (\(p.scope == .perInput ? "per input" : "shared"), \(value)): \(p.help)")
    }
    return lines.joined(separator: "\n")
}.joined(separator: "\n")
