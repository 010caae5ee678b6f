/// A PEFT LoRA adapter merged into its base model, read as one checkpoint: mergekit's
/// `model+adapter` references. The adapter is a directory with `adapter_config.json` and
/// `adapter_model.safetensors` (or `adapter_model.bin`), as PEFT's `save_pretrained` writes it.
///
/// Each adapted module M of the base changes as PEFT's `merge_and_unload` changes it:
///
///     W_M ← W_M + s · B·A          nn.Linear (A is [r, in], B is [out, r])
///     W_M ← W_M + s · (B·A)ᵀ       Conv1D (fan_in_fan_out) and embeddings (lora_embedding_A/B)
///     b_M ← b_M + s · b_B          `lora_bias` (the bias of lora_B)
///
/// with s = α / r, or α / √r with `use_rslora`; r and α come from `rank_pattern` and
/// `alpha_pattern` when one of their patterns matches the module's name (the first that does,
/// as PEFT matches `(.*\.)?(pattern)$`). Tensors the adapter saves whole (`M.base_layer.X`,
/// trained biases, `modules_to_save` such as `lm_head.weight`) replace the base's first.
///
/// Unlike PEFT, which rounds s·B·A to the factors' dtype and then adds it in the weight's dtype,
/// each element is computed in float64 and rounded once, to the base tensor's dtype, ties to even.
/// Whether a square weight is stored as [in, out] (Conv1D) cannot be seen from its shape: it
/// follows `fan_in_fan_out`, unless every non-square adapted weight of the model shows the other
/// layout (PEFT itself sets the flag from each layer's type).
public enum LoraAdapter {
    /// The prefix PEFT gives every tensor of a saved adapter.
    static let prefix = "base_model.model."
    /// The `model_type`s whose transformers models use Conv1D layers (weights stored [in, out]),
    /// and those layers' names.
    static let conv1DModels: Set<String> = ["gpt2", "openai-gpt", "imagegpt", "decision_transformer", "clvp", "clvp_decoder"]
    static let conv1DLayers: Set<String> = ["c_attn", "c_proj", "c_fc", "q_attn"]

    /// `reference` read as `model+adapter`: split at the first `+` where the model exists and the
    /// adapter is a directory, when `reference` itself does not exist.
    public static func split(_ reference: String) -> (model: String, adapter: String)? {
        guard pathKind(reference) == .missing else { return nil }
        for plus in reference.indices where reference[plus] == "+" && plus != reference.startIndex {
            let model = String(reference[..<plus]), adapter = String(reference[reference.index(after: plus)...])
            if pathKind(model) != .missing && pathKind(adapter) == .directory { return (model, adapter) }
        }
        return nil
    }

    /// Why `reference`, which does not exist, is no `model+adapter` either, when some `+` splits it
    /// into a model that exists and an adapter that does not.
    static func missingAdapter(_ reference: String) -> WSAMergeError? {
        guard pathKind(reference) == .missing else { return nil }
        for plus in reference.indices where reference[plus] == "+" && plus != reference.startIndex {
            let model = String(reference[..<plus]), adapter = String(reference[reference.index(after: plus)...])
            if pathKind(model) != .missing {
                return .missingInput(file: reference, reason: "no such file, nor a LoRA adapter directory '\(adapter)' to merge into '\(model)'")
            }
        }
        return nil
    }

    /// The model part of a `model+adapter` reference, else `reference` itself.
    public static func model(of reference: String) -> String { split(reference)?.model ?? reference }

    /// The base checkpoint (read from `model`) with the adapter at `directory` merged in, as a
    /// checkpoint named `model+directory` that reads both.
    ///
    /// - Throws: `.missingInput` when the directory holds no adapter; `.malformed` naming the
    ///   tensor for a key or shape that does not fit the base, and for adapters PEFT merges in
    ///   other ways (DoRA, other PEFT methods, parameter targets, layer replication).
    public static func apply(_ directory: String, to base: Checkpoint, model: String) throws -> Checkpoint {
        let name = model + "+" + directory
        let config = try Config(directory: directory)
        let weightsFile = ["adapter_model.safetensors", "adapter_model.bin"].map { joinPath(directory, $0) }.first { pathKind($0) == .file }
        guard let weightsFile else {
            throw WSAMergeError.missingInput(file: directory, reason: "the LoRA adapter directory holds neither adapter_model.safetensors nor adapter_model.bin")
        }
        let weights = try CheckpointReader.open(weightsFile)
        let modules = try Module.collect(weights, config: config)
        let modelConfig = ModelConfig(model: model)
        let squareTransposed = config.squareLayout(of: modules, in: base, modelType: modelConfig.modelType)
        var patches: [Int: Patch] = [:]
        func patch(_ index: Int?, _ name: String, key: String, tied: Bool = false) throws -> (Int, Patch) {
            guard let index else {
                let why = tied ? ", whose head is tied to its embeddings (stored once): a merged model would untie them; merge it with PEFT and save it with tie_word_embeddings false" : ""
                throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "the adapter changes '\(name)', which '\(model)' does not have\(why)")
            }
            let dtype = base.tensors[index].dtype
            guard dtype.isFloat && dtype.isDecodable && dtype.isEncodable else {
                throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "the adapter changes '\(name)', a \(dtype.rawValue) tensor of '\(model)'; only F64, F32, F16 and BF16 tensors are changed")
            }
            return (index, patches[index] ?? Patch(start: base.sources[index]))
        }
        for (key, name, source) in modules.replacements {
            // A tied head's `base_layer` saved whole is the shared weight: the embeddings, when the
            // head is stored once. A head of `modules_to_save` there would untie them: refused.
            var stored = base.index(of: name)
            let sharedHead = stored == nil && Ties.isHead(name) ? Ties.embedding(in: base, shape: source.tensor.shape) : nil
            if key.contains(".base_layer.") { stored = stored ?? sharedHead }
            let (index, current) = try patch(stored, name, key: key, tied: sharedHead != nil)
            guard source.tensor.shape == base.tensors[index].shape else {
                throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "shape \(source.tensor.shape) replaces '\(name)' of shape \(base.tensors[index].shape)")
            }
            var next = current
            next.start = source
            patches[index] = next
        }
        var ties = Ties(base: base, config: modelConfig)
        for module in modules.lowRank {
            let scale = try config.scale(of: module)
            let target = module.name + ".weight", inner = module.a.tensor.shape[1], outer = module.b.tensor.shape[0]
            // A head tied to the embeddings and stored once: PEFT changes the one shared weight.
            var index = base.index(of: target)
            if index == nil, !module.embedding, Ties.isHead(target) { index = Ties.embedding(in: base, shape: [outer, inner]) }
            let (at, current) = try patch(index, target, key: module.aKey)
            let shape = base.tensors[at].shape
            guard shape.count == 2 else {
                throw WSAMergeError.malformed(file: weights.path, tensor: module.aKey, reason: "the adapter changes '\(target)' of shape \(shape); only 2-D weights (linear and embedding layers) are changed")
            }
            let straight = shape == [outer, inner], transposed = shape == [inner, outer]
            guard straight || transposed else {
                throw WSAMergeError.malformed(file: weights.path, tensor: module.aKey, reason: "factors of shapes \(module.a.tensor.shape) and \(module.b.tensor.shape) do not fit '\(target)' of shape \(shape)")
            }
            let delta = Patch.Delta(a: module.a, b: module.b, scale: scale,
                                    transposed: module.embedding || (straight && transposed ? squareTransposed(module) : transposed))
            var next = current
            next.deltas.append(delta)
            patches[at] = next
            // Tied embeddings stored twice (the same bytes under both names) change together.
            if let twin = try ties.twin(of: at) {
                let (_, twinPatch) = try patch(twin, base.tensors[twin].name, key: module.aKey)
                var nextTwin = twinPatch
                nextTwin.deltas.append(delta)
                patches[twin] = nextTwin
            }
            if let bias = module.bias {
                let (biasIndex, biasPatch) = try patch(base.index(of: module.name + ".bias"), module.name + ".bias",
                                                       key: module.aKey.replacingSuffix("lora_A.weight", with: "lora_B.bias"))
                guard base.tensors[biasIndex].shape == bias.tensor.shape else {
                    throw WSAMergeError.malformed(file: weights.path, tensor: bias.tensor.name, reason: "shape \(bias.tensor.shape) does not fit '\(module.name).bias' of shape \(base.tensors[biasIndex].shape)")
                }
                var nextBias = biasPatch
                nextBias.deltas.append(Patch.Delta(a: nil, b: bias, scale: scale, transposed: false))
                patches[biasIndex] = nextBias
            }
        }
        let sources: [any TensorSource] = base.sources.indices.map { i in
            guard let patch = patches[i] else { return base.sources[i] }
            return LoraMergedSource(tensor: base.tensors[i], patch: patch, path: name)
        }
        return Checkpoint(path: name, format: base.format, metadata: base.metadata, sources: sources,
                          files: base.files + weights.files, nonTensors: base.nonTensors, modules: base.modules)
    }

    /// What the merge reads from the model's `config.json` (in the model directory, or beside a
    /// weights file): its `model_type` and `tie_word_embeddings`.
    struct ModelConfig {
        var modelType: String?
        var tiedEmbeddings: Bool?

        init(model: String) {
            let directory = pathKind(model) == .directory ? model : parentDirectory(of: model)
            guard let file = try? ReadableFile(path: joinPath(directory, "config.json")), file.size <= 1 << 22,
                  let bytes = try? file.readBytes(at: 0, count: file.size),
                  let json = try? bytes.withUnsafeBytes({ try JSON.parse($0) }) else { return }
            modelType = json["model_type"]?.stringValue
            if case .bool(let tied)? = json["tie_word_embeddings"] { tiedEmbeddings = tied }
        }
    }

    /// Input embeddings and the output head tied to them (one weight in PEFT's model): stored once
    /// (the head is missing) or twice with the same bytes.
    struct Ties {
        let base: Checkpoint
        let config: ModelConfig
        private var known: [Int: Int?] = [:]

        init(base: Checkpoint, config: ModelConfig) {
            self.base = base
            self.config = config
        }

        static func isHead(_ name: String) -> Bool { name == "lm_head.weight" || name.hasSuffix(".lm_head.weight") }

        /// The one 2-D tensor before the layers of `shape` (the input embeddings a head shares).
        static func embedding(in base: Checkpoint, shape: [Int]) -> Int? {
            let found = base.tensors.indices.filter { base.tensors[$0].shape == shape && LayerGroups.precedesTheLayers(base.tensors[$0].name) && !isHead(base.tensors[$0].name) }
            return found.count == 1 ? found[0] : nil
        }

        /// The tensor tied to tensor `index` and stored beside it with the same bytes: the head of
        /// the embeddings, or the embeddings of the head; nil when the config unties them.
        mutating func twin(of index: Int) throws -> Int? {
            if let cached = known[index] { return cached }
            var result: Int?
            let tensor = base.tensors[index]
            if config.tiedEmbeddings != false, tensor.shape.count == 2 {
                let candidates = Self.isHead(tensor.name) ? Self.embedding(in: base, shape: tensor.shape).map { [$0] } ?? []
                    : LayerGroups.precedesTheLayers(tensor.name) ? base.tensors.indices.filter { Self.isHead(base.tensors[$0].name) && base.tensors[$0].shape == tensor.shape } : []
                if candidates.count == 1, base.tensors[candidates[0]].dtype == tensor.dtype, try TensorReader.sameBytes([base.reader(for: index), base.reader(for: candidates[0])]) {
                    result = candidates[0]
                }
            }
            known[index] = result
            return result
        }
    }

    /// What one base tensor becomes: `start` (the base's tensor or the adapter's replacement) plus
    /// each delta.
    struct Patch: Sendable {
        struct Delta: Sendable {
            /// A is [r, in] (lora_A, or lora_embedding_A), nil for a bias delta.
            let a: (any TensorSource)?
            /// B is [out, r] (lora_B, lora_embedding_B), or the bias of lora_B.
            let b: any TensorSource
            let scale: Double
            /// Whether the delta is (B·A)ᵀ.
            let transposed: Bool
        }
        var start: any TensorSource
        var deltas: [Delta] = []
    }

    /// An adapter's configuration, as far as the merge reads it.
    struct Config {
        let path: String
        let r: Int
        let alpha: Double
        let rsLoRA: Bool
        let fanInFanOut: Bool
        let rankPattern: [(String, Int)]
        let alphaPattern: [(String, Double)]

        init(directory: String) throws {
            path = joinPath(directory, "adapter_config.json")
            guard pathKind(directory) == .directory, pathKind(path) == .file else {
                let named = listDirectory(directory).filter { pathKind(joinPath(joinPath(directory, $0), "adapter_config.json")) == .file }
                let hint = named.isEmpty ? "" : "; it holds named adapters in \(named.joined(separator: ", ")): name one, as MODEL+\(joinPath(directory, named[0]))"
                throw WSAMergeError.missingInput(file: directory, reason: "not a LoRA adapter directory (no adapter_config.json)\(hint)")
            }
            let file = try ReadableFile(path: path)
            guard file.size <= 1 << 22 else { throw WSAMergeError.malformed(file: path, reason: "larger than 4 MiB, too large for an adapter config") }
            let bytes = try file.readBytes(at: 0, count: file.size)
            let json: JSON
            do { json = try bytes.withUnsafeBytes { try JSON.parse($0) } } catch {
                throw WSAMergeError.malformed(file: path, reason: "not valid JSON: \(error)")
            }
            let path = path
            func fail(_ reason: String) -> WSAMergeError { .malformed(file: path, reason: reason) }
            guard let type = json["peft_type"]?.stringValue else { throw fail("no peft_type: not a PEFT adapter config") }
            guard type == "LORA" else { throw fail("a \(type) adapter; wsamerge merges LoRA adapters only") }
            func flag(_ key: String) throws -> Bool {
                switch json[key] {
                case nil, .null?: return false
                case .bool(let value)?: return value
                default: throw fail("'\(key)' must be true or false")
                }
            }
            if try flag("use_dora") {
                throw fail("a DoRA adapter (use_dora); its merge rescales each weight by its column norms, which wsamerge does not do: merge it with PEFT first")
            }
            for key in ["use_bdlora", "use_qalora"] where try flag(key) {
                throw fail("'\(key)' is set; adapters that use it are merged by PEFT only")
            }
            for key in ["target_parameters", "layer_replication", "trainable_token_indices", "alora_invocation_tokens", "arrow_config", "kasa_config"] {
                if let value = json[key], value != .null, value != .array([]), value != .object([]) {
                    throw fail("'\(key)' is set; adapters that use it are merged by PEFT only")
                }
            }
            for key in ["rank_pattern", "alpha_pattern"] {
                if let value = json[key], value != .null, value.objectValue == nil { throw fail("'\(key)' must be an object of pattern: value") }
            }
            guard let r = json["r"]?.intValue, r > 0 else { throw fail("'r' must be a positive integer") }
            guard let alpha = json["lora_alpha"]?.doubleValue, alpha.isFinite else { throw fail("'lora_alpha' must be a number") }
            self.r = r
            self.alpha = alpha
            rsLoRA = try flag("use_rslora")
            fanInFanOut = try flag("fan_in_fan_out")
            _ = try flag("lora_bias")
            rankPattern = try (json["rank_pattern"]?.objectValue ?? []).map { key, value in
                guard let rank = value.intValue, rank > 0 else { throw fail("rank_pattern '\(key)' must be a positive integer") }
                return (key, rank)
            }
            alphaPattern = try (json["alpha_pattern"]?.objectValue ?? []).map { key, value in
                guard let alpha = value.doubleValue, alpha.isFinite else { throw fail("alpha_pattern '\(key)' must be a number") }
                return (key, alpha)
            }
        }

        /// The value of the first pattern that matches `module` as PEFT matches them
        /// (`re.match(rf"(.*\.)?({pattern})$", module)`), else nil.
        func value<T>(in patterns: [(String, T)], for module: String) throws -> T? {
            for (pattern, value) in patterns {
                let regex: Regex<AnyRegexOutput>
                do { regex = try Regex("(.*\\.)?(" + pattern + ")") } catch {
                    throw WSAMergeError.malformed(file: path, reason: "pattern '\(pattern)' is not a regular expression wsamerge reads: \(error)")
                }
                if module.wholeMatch(of: regex) != nil { return value }
            }
            return nil
        }

        /// s = α / r, or α / √r with rsLoRA, r and α by the patterns; A's rows must be r.
        func scale(of module: Module) throws -> Double {
            let rank = try value(in: rankPattern, for: module.name) ?? r
            let alpha = try value(in: alphaPattern, for: module.name) ?? self.alpha
            guard module.a.tensor.shape[0] == rank else {
                throw WSAMergeError.malformed(file: module.a.path, tensor: module.aKey, reason: "rank \(module.a.tensor.shape[0]) differs from the config's r = \(rank) for '\(module.name)'")
            }
            return rsLoRA ? alpha / Double(rank).squareRoot() : alpha / Double(rank)
        }

        /// Whether a square weight takes the delta transposed (it is stored [in, out], as
        /// transformers' Conv1D stores it). PEFT decides by each layer's type, which the tensors
        /// cannot show: with the model's `config.json`, the Conv1D layers of the models that have
        /// them (GPT-2's `c_attn`, `c_proj`, `c_fc`, `q_attn`); without it, the layout the
        /// module's non-square namesakes show (GPT-2's `mlp.c_proj` for `attn.c_proj`), else
        /// `fan_in_fan_out`.
        func squareLayout(of modules: Module.Collection, in base: Checkpoint, modelType: String?) -> (Module) -> Bool {
            if let modelType {
                let conv1D = LoraAdapter.conv1DModels.contains(modelType)
                return { conv1D && LoraAdapter.conv1DLayers.contains($0.leaf) }
            }
            var seen: [String: Bool] = [:], mixed = Set<String>()
            for module in modules.lowRank where !module.embedding {
                guard let index = base.index(of: module.name + ".weight") else { continue }
                let shape = base.tensors[index].shape, out = module.b.tensor.shape[0], inner = module.a.tensor.shape[1]
                guard out != inner, shape == [out, inner] || shape == [inner, out] else { continue }
                let transposed = shape == [inner, out]
                if let known = seen[module.leaf], known != transposed { mixed.insert(module.leaf) }
                seen[module.leaf] = transposed
            }
            let fanInFanOut = fanInFanOut
            return { module in mixed.contains(module.leaf) ? fanInFanOut : seen[module.leaf] ?? fanInFanOut }
        }
    }

    /// One adapted module's factors.
    struct Module {
        let name: String
        /// The last part of the name (`c_proj` of `transformer.h.0.attn.c_proj`).
        var leaf: String { name.split(separator: ".").last.map(String.init) ?? name }
        let aKey: String
        let a: any TensorSource
        let b: any TensorSource
        let bias: (any TensorSource)?
        let embedding: Bool

        struct Collection {
            var lowRank: [Module] = []
            var replacements: [(key: String, name: String, source: any TensorSource)] = []
        }

        /// Sorts the adapter's tensors into factors and replacements, refusing what it does not know.
        static func collect(_ weights: Checkpoint, config: Config) throws -> Collection {
            var result = Collection()
            var stripped: [String: any TensorSource] = [:]
            for source in weights.sources {
                let key = source.tensor.name
                guard key.hasPrefix(LoraAdapter.prefix), key.count > LoraAdapter.prefix.count else {
                    throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "not a PEFT adapter tensor (its name does not start with '\(LoraAdapter.prefix)')")
                }
                guard source.tensor.dtype.isFloat && source.tensor.dtype.isDecodable else {
                    throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "a \(source.tensor.dtype.rawValue) tensor; adapter tensors are float")
                }
                stripped[String(key.dropFirst(LoraAdapter.prefix.count))] = source
            }
            let kinds = [(".lora_A.weight", ".lora_B.weight", false), (".lora_embedding_A", ".lora_embedding_B", true)]
            for source in weights.sources {
                let key = String(source.tensor.name.dropFirst(LoraAdapter.prefix.count))
                if let (aSuffix, bSuffix, embedding) = kinds.first(where: { key.hasSuffix($0.0) }) {
                    let name = String(key.dropLast(aSuffix.count))
                    guard let b = stripped[name + bSuffix] else {
                        throw WSAMergeError.malformed(file: weights.path, tensor: source.tensor.name, reason: "has no \(bSuffix.dropFirst()) beside it")
                    }
                    let a = source
                    guard a.tensor.shape.count == 2, b.tensor.shape.count == 2, a.tensor.shape[0] == b.tensor.shape[1] else {
                        throw WSAMergeError.malformed(file: weights.path, tensor: source.tensor.name, reason: "factors of shapes \(a.tensor.shape) and \(b.tensor.shape) are not [r, in] and [out, r] (only linear and embedding layers are merged)")
                    }
                    let bias = embedding ? nil : stripped[name + ".lora_B.bias"]
                    result.lowRank.append(Module(name: name, aKey: source.tensor.name, a: a, b: b, bias: bias, embedding: embedding))
                } else if let (_, bSuffix, _) = kinds.first(where: { key.hasSuffix($0.1) }) {
                    guard stripped[String(key.dropLast(bSuffix.count)) + (bSuffix == ".lora_B.weight" ? ".lora_A.weight" : ".lora_embedding_A")] != nil else {
                        throw WSAMergeError.malformed(file: weights.path, tensor: source.tensor.name, reason: "has no lora_A beside it")
                    }
                } else if key.hasSuffix(".lora_B.bias") {
                    guard stripped[String(key.dropLast(".lora_B.bias".count)) + ".lora_A.weight"] != nil else {
                        throw WSAMergeError.malformed(file: weights.path, tensor: source.tensor.name, reason: "has no lora_A beside it")
                    }
                } else if key.split(separator: ".").contains(where: { $0.hasPrefix("lora_") }) {
                    throw WSAMergeError.malformed(file: weights.path, tensor: source.tensor.name, reason: "an adapter tensor of a kind wsamerge does not merge (it merges lora_A/lora_B, lora_embedding_A/B and lora_B biases)")
                } else {
                    let name = key.split(separator: ".", omittingEmptySubsequences: false).filter { $0 != "base_layer" }.joined(separator: ".")
                    result.replacements.append((source.tensor.name, name, source))
                }
            }
            return result
        }
    }
}

extension String {
    /// The string with `suffix` replaced by `replacement` when it ends with it.
    fileprivate func replacingSuffix(_ suffix: String, with replacement: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) + replacement : self
    }
}
