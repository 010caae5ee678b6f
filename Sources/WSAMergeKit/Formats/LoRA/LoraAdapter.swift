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
        let squareTransposed = config.squareLayout(of: modules, in: base)
        var patches: [Int: Patch] = [:]
        func patch(_ name: String, key: String) throws -> (Int, Patch) {
            guard let index = base.index(of: name) else {
                throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "the adapter changes '\(name)', which '\(model)' does not have")
            }
            let dtype = base.tensors[index].dtype
            guard dtype.isFloat && dtype.isDecodable && dtype.isEncodable else {
                throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "the adapter changes '\(name)', a \(dtype.rawValue) tensor of '\(model)'; only F64, F32, F16 and BF16 tensors are changed")
            }
            return (index, patches[index] ?? Patch(start: base.sources[index]))
        }
        for (key, name, source) in modules.replacements {
            let (index, current) = try patch(name, key: key)
            guard source.tensor.shape == base.tensors[index].shape else {
                throw WSAMergeError.malformed(file: weights.path, tensor: key, reason: "shape \(source.tensor.shape) replaces '\(name)' of shape \(base.tensors[index].shape)")
            }
            var next = current
            next.start = source
            patches[index] = next
        }
        for module in modules.lowRank {
            let scale = try config.scale(of: module)
            let (index, current) = try patch(module.name + ".weight", key: module.aKey)
            let shape = base.tensors[index].shape
            guard shape.count == 2 else {
                throw WSAMergeError.malformed(file: weights.path, tensor: module.aKey, reason: "the adapter changes '\(module.name).weight' of shape \(shape); only 2-D weights (linear and embedding layers) are changed")
            }
            let straight = shape == [module.b.tensor.shape[0], module.a.tensor.shape[1]]
            let transposed = shape == [module.a.tensor.shape[1], module.b.tensor.shape[0]]
            guard straight || transposed else {
                throw WSAMergeError.malformed(file: weights.path, tensor: module.aKey, reason: "factors of shapes \(module.a.tensor.shape) and \(module.b.tensor.shape) do not fit '\(module.name).weight' of shape \(shape)")
            }
            let isTransposed = module.embedding || (straight && transposed ? squareTransposed : transposed)
            var next = current
            next.deltas.append(Patch.Delta(a: module.a, b: module.b, scale: scale, transposed: isTransposed))
            patches[index] = next
            if let bias = module.bias {
                let (biasIndex, biasPatch) = try patch(module.name + ".bias", key: module.aKey.replacingSuffix("lora_A.weight", with: "lora_B.bias"))
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
                throw WSAMergeError.missingInput(file: directory, reason: "not a LoRA adapter directory (no adapter_config.json)")
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
            if json["use_dora"] == .bool(true) {
                throw fail("a DoRA adapter (use_dora); its merge rescales each weight by its column norms, which wsamerge does not do: merge it with PEFT first")
            }
            for key in ["target_parameters", "layer_replication", "trainable_token_indices", "alora_invocation_tokens"] {
                if let value = json[key], value != .null, value != .array([]), value != .object([]) {
                    throw fail("'\(key)' is set; adapters that use it are merged by PEFT only")
                }
            }
            guard let r = json["r"]?.intValue, r > 0 else { throw fail("'r' must be a positive integer") }
            guard let alpha = json["lora_alpha"]?.doubleValue, alpha.isFinite else { throw fail("'lora_alpha' must be a number") }
            self.r = r
            self.alpha = alpha
            rsLoRA = json["use_rslora"] == .bool(true)
            fanInFanOut = json["fan_in_fan_out"] == .bool(true)
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

        /// Whether square linear weights take the delta transposed: `fan_in_fan_out`, unless
        /// every non-square adapted linear weight of `base` shows the other layout.
        func squareLayout(of modules: Module.Collection, in base: Checkpoint) -> Bool {
            var straight = 0, transposed = 0
            for module in modules.lowRank where !module.embedding {
                guard let index = base.index(of: module.name + ".weight") else { continue }
                let shape = base.tensors[index].shape, out = module.b.tensor.shape[0], inner = module.a.tensor.shape[1]
                guard out != inner else { continue }
                if shape == [out, inner] { straight += 1 } else if shape == [inner, out] { transposed += 1 }
            }
            if fanInFanOut { return !(straight > 0 && transposed == 0) }
            return transposed > 0 && straight == 0
        }
    }

    /// One adapted module's factors.
    struct Module {
        let name: String
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
