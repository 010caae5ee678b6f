#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What makes a directory output a loadable Hugging Face model directory, written beside the
/// weights: the merge's recipe (`wsamerge_recipe.yml`), every non-weight file of a source model
/// directory (config, generation config, tokenizer files, `modules.json`, sub-module configs such
/// as `1_Pooling/config.json`, chat templates…; regular files only, recursively, never through a
/// link out of the directory), `config.json`'s `torch_dtype`/`dtype` rewritten to the output dtype,
/// and a `README.md` model card. A conversion (`convert`) is the same model in another format:
/// it has no recipe and keeps the source's own model card. Checked before the merge or
/// conversion, written once the weights are, and put in place with them
/// (`CheckpointWriter.add(companions:)`).
public struct ModelDirectoryOutput {
    public static let recipeName = "wsamerge_recipe.yml"

    /// The output directory, or nil when the output is a single file.
    public let directory: String?
    /// The merge's recipe; nil for a conversion.
    public let recipe: String?
    /// The model directory whose files are copied, if any.
    public let source: String?
    /// Files to copy: source path, path relative to the output directory.
    public private(set) var copies: [(source: String, name: String)]
    /// The output dtype when it is not the inputs' own (`config.json` is rewritten to it).
    let dtype: DType?
    /// The output's number of layers when slices chose them (`config.json` is rewritten to it).
    let layers: Int?
    /// The chat template the output's tokenizer files get (`ChatTemplate`), if any.
    private(set) var chatTemplate: String?
    let force: Bool

    /// The model directory whose files a directory output gets: `explicit` (`--copy-files-from`),
    /// else the base when it is a directory, else the first input when it is; nil when `disabled`
    /// or the output is a single file.
    /// An explicit source with a single-file output is returned, for `init` to refuse.
    public static func source(for request: Merger.Request, explicit: String?, disabled: Bool) -> String? {
        source(among: [request.base].compactMap { $0 } + request.inputs.prefix(1), output: request.output, explicit: explicit,
               disabled: disabled)
    }

    /// `explicit` unless `disabled`, else the first of `candidates` that is a directory when the
    /// output is one.
    public static func source(among candidates: [String], output: OutputOptions, explicit: String?, disabled: Bool) -> String? {
        if let explicit, !disabled { return explicit }
        guard !disabled, case .sharded = output.layout else { return nil }
        return candidates.map(LoraAdapter.model(of:)).first { pathKind($0) == .directory }
    }

    /// Plans the files for `request` (whose `recipe` is set), copying from the model directory
    /// `source` when given.
    public init(_ request: Merger.Request, source tokenizerSource: String?) throws {
        try self.init(output: request.output, dtype: request.dtype, layers: request.layerPositions?.count, recipe: request.recipe ?? "",
                      source: tokenizerSource)
    }

    /// The same files with the chat template `setting` asks for (`ChatTemplate.resolve`, `auto`
    /// over `models`) as the template of the copied tokenizer files: set in `tokenizer_config.json`
    /// (which must be among them and hold a JSON object) and written as `chat_template.jinja`,
    /// which newer transformers read first; the source's other templates
    /// (`additional_chat_templates/`, a processor's `chat_template.json`) are not copied, as
    /// mergekit's output holds the one template. When `auto` finds none, the same is checked and
    /// the files are kept as they are.
    public func setting(chatTemplate setting: String, models: [String]) throws -> ModelDirectoryOutput {
        let template = try ChatTemplate.resolve(setting, models: models)
        guard let directory else {
            throw WSAMergeError.usage("a chat template goes into the tokenizer files beside the weights, so the output must be a directory")
        }
        guard let source else {
            throw WSAMergeError.usage("a chat template goes into the tokenizer files copied from a model directory, and this merge copies none")
        }
        guard let config = copies.first(where: { $0.name == "tokenizer_config.json" }) else {
            throw WSAMergeError.usage("a chat template goes into tokenizer_config.json, and '\(source)' has none")
        }
        guard let template else { return self }
        _ = try ChatTemplate.tokenizerConfig(try Self.text(config.source), template: template, file: config.source)
        var result = self
        result.chatTemplate = template
        result.copies.removeAll { $0.name.hasPrefix(ChatTemplate.additionalFolder + "/") || $0.name == "chat_template.json" }
        if !copies.contains(where: { $0.name == ChatTemplate.fileName }) {
            if !force && pathKind(directory + "/" + ChatTemplate.fileName) != .missing {
                throw WSAMergeError.hinted(.cannotCreate(file: directory + "/" + ChatTemplate.fileName, reason: "already exists"), .force)
            }
        }
        return result
    }

    /// A small text file's contents; invalid UTF-8 is refused.
    static func text(_ path: String) throws -> String {
        let file = try ReadableFile(path: path)
        guard let text = String(validating: try file.readBytes(at: 0, count: file.size), as: UTF8.self) else {
            throw WSAMergeError.malformed(file: path, reason: "not valid UTF-8 text")
        }
        return text
    }

    /// The model directory whose files a converted directory gets: `explicit`
    /// (`--copy-files-from`), else the input when it is a directory; nil when `disabled` or the
    /// output is a single file.
    public static func source(converting input: String, output: OutputOptions, explicit: String?, disabled: Bool) -> String? {
        source(among: [input], output: output, explicit: explicit, disabled: disabled)
    }

    /// Plans the files of a conversion to `output` (as `dtype` when given), copying from the
    /// model directory `source` when given, its model card included.
    public init(converting output: OutputOptions, dtype: DType?, source: String?) throws {
        try self.init(output: output, dtype: dtype, layers: nil, recipe: nil, source: source)
    }

    private init(output: OutputOptions, dtype: DType?, layers: Int?, recipe: String?, source tokenizerSource: String?) throws {
        self.recipe = recipe
        source = tokenizerSource
        self.dtype = dtype
        self.layers = layers
        force = output.force
        if case .sharded = output.layout {
            var dir = output.path
            while dir.count > 1 && dir.hasSuffix("/") { dir.removeLast() }
            directory = dir
        } else {
            directory = nil
        }
        guard let tokenizerSource else {
            copies = []
            return
        }
        guard let directory else {
            throw WSAMergeError.usage("a model's tokenizer and config files go beside the weights, so the output must be a directory")
        }
        switch pathKind(tokenizerSource) {
        case .directory: break
        case .missing: throw WSAMergeError.missingInput(file: tokenizerSource, reason: "no such directory (the config and tokenizer files come from a model directory)")
        default: throw WSAMergeError.usage("the config and tokenizer files come from a model directory, and '\(tokenizerSource)' is not a directory")
        }
        var found: [(String, String)] = []
        var visited: Set<String> = [realPath(tokenizerSource) ?? tokenizerSource]
        Self.collect(tokenizerSource, root: Self.allowedRoot(tokenizerSource), prefix: "", keepingCard: recipe == nil, visited: &visited,
                     into: &found)
        copies = found
        if !force {
            for (_, name) in copies where pathKind(directory + "/" + name) != .missing {
                throw WSAMergeError.hinted(.cannotCreate(file: directory + "/" + name, reason: "already exists"), .force)
            }
        }
    }

    /// The recipe, the copies and the model card, written into unnamed files in the output
    /// directory for the checkpoint's writer to put in place (none for a file output).
    public func files(report: Merger.Report) throws -> [OutputFile] {
        try files(card: source.map { Self.modelCard(report, recipe: recipe ?? "", source: $0) })
    }

    /// The files of a conversion: the copies, the source's model card among them.
    public func files() throws -> [OutputFile] { try files(card: nil) }

    private func files(card: String?) throws -> [OutputFile] {
        guard let directory else { return [] }
        var files: [OutputFile] = []
        /// A new output file `name` in the directory, filled by `body`.
        func file(_ name: String, force: Bool, inputs: Set<FileIdentity>, _ body: (OutputFile) throws -> Void) throws {
            let output = try OutputFile(destination: directory + "/" + name, force: force, inputs: inputs, directIO: false)
            try body(output)
            try output.finishWriting()  // its write buffers freed while it waits for the weights
            files.append(output)
        }
        if let recipe { try file(Self.recipeName, force: true, inputs: []) { try $0.write(recipe) } }
        for (source, name) in copies {
            var parent = ""
            for part in name.split(separator: "/").dropLast() {
                parent += "/" + part
                try makeDirectory(directory + parent)
            }
            let input = try ReadableFile(path: source)
            try file(name, force: force, inputs: [input.identity]) { output in
                if let chatTemplate, name == "tokenizer_config.json" || name == ChatTemplate.fileName {
                    try output.write(name == ChatTemplate.fileName ? chatTemplate
                                     : try ChatTemplate.tokenizerConfig(try Self.text(source), template: chatTemplate, file: source))
                    return
                }
                if name == "config.json", dtype != nil || layers != nil {
                    var text = String(decoding: try input.readBytes(at: 0, count: input.size), as: UTF8.self)
                    if let dtype { text = Self.config(text, dtype: dtype) }
                    if let layers { text = Self.config(text, layers: layers) }
                    try output.write(text)
                    return
                }
                var offset = 0
                while offset < input.size {
                    let count = min(1 << 20, input.size - offset)
                    try output.write(try input.readBytes(at: offset, count: count))
                    offset += count
                }
            }
        }
        if let chatTemplate, !copies.contains(where: { $0.name == ChatTemplate.fileName }) {
            try file(ChatTemplate.fileName, force: force, inputs: []) { try $0.write(chatTemplate) }
        }
        if let card { try file("README.md", force: true, inputs: []) { try $0.write(card) } }
        return files
    }

    /// The model card: what was merged, how, and with which wsamerge.
    static func modelCard(_ report: Merger.Report, recipe: String, source: String) -> String {
        let prepared = report.prepared, plan = prepared.plan
        let method = prepared.context.parameters.declaration.identifier
        var lines = ["---", "tags:", "- merge", "- wsamerge", "---", "", "# Merged model", "",
                     "This model was merged with [wsamerge](https://pypi.org/project/wsamerge/) \(WSAMergeVersion.current) using the `\(method)` method.", ""]
        if let base = prepared.baseName { lines += ["Base model: `\(base)`", ""] }
        lines += ["Models merged:", ""] + prepared.inputNames.map { "- `\($0)`" } + [""]
        if let weights = Merger.reportWeights(prepared) { lines += ["Weights: `\(weights.text)`", ""] }
        lines += ["Parameters: `\(prepared.context.parameters.json.text)`", ""]
        lines += ["Configuration and tokenizer files were copied from `\(source)`.", ""]
        var counts: [String: Int] = [:]
        var order: [String] = []
        for (item, result) in zip(plan.items, report.results) {
            var key: String
            switch item.action {
            case .copy(let reason): key = "copied (\(reason))"
            case .merge: key = result?.method ?? method
            }
            if counts[key] == nil { order.append(key) }
            counts[key, default: 0] += 1
        }
        lines += ["| tensors | what happened |", "|---|---|"] + order.map { "| \(counts[$0]!) | \($0) |" } + [""]
        let scopes = zip(plan.items, report.results).compactMap { item, result in result?.fused.map { (item.name, $0) } }
        if !scopes.isEmpty {
            let stds = scopes.map(\.1.std)
            lines += ["Fused weight scopes: \(scopes.count) tensors, std from \(stds.min()!) to \(stds.max()!).", ""]
        }
        lines += ["## Recipe", "", "Replay it with `wsamerge fuse --recipe wsamerge_recipe.yml -o OUT/`, run from the directory the merge ran in (relative model paths are as they were given):", "", "```yaml", recipe.trimmingSuffix("\n"), "```", ""]
        return lines.joined(separator: "\n")
    }

    /// `config.json` with every `"torch_dtype"` / `"dtype"` float value replaced by `dtype`'s torch
    /// name; the rest of the text (keys, order, spacing) is left as it was.
    static func config(_ text: String, dtype: DType) -> String {
        let names = [DType.F32: "float32", .F16: "float16", .BF16: "bfloat16", .F64: "float64"]
        guard let name = names[dtype] else { return text }
        var result = text
        for key in ["torch_dtype", "dtype"] {
            for old in names.values where old != name {
                for spacing in [": ", ":"] {
                    result = result.replacingAll("\"\(key)\"\(spacing)\"\(old)\"", with: "\"\(key)\"\(spacing)\"\(name)\"")
                }
            }
        }
        return result
    }

    /// The keys that hold a model's number of layers in `config.json` (llama and most others,
    /// GPT-2, MPT, T5).
    static let layerCountKeys: Set<String> = ["num_hidden_layers", "n_layer", "n_layers", "num_layers"]

    /// `config.json` with the whole-number value of each `layerCountKeys` key of its top-level
    /// object replaced by `layers`; nested objects (a vision tower's config) and the rest of the
    /// text are left as they were.
    static func config(_ text: String, layers: Int) -> String {
        let bytes = Array(text.utf8)
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count)
        var depth = 0, i = 0
        var lastString: [UInt8] = []
        let digits = UInt8(ascii: "0")...UInt8(ascii: "9")
        while i < bytes.count {
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "\""):
                var j = i + 1
                while j < bytes.count && bytes[j] != UInt8(ascii: "\"") { j += bytes[j] == UInt8(ascii: "\\") ? 2 : 1 }
                lastString = Array(bytes[(i + 1)..<Swift.min(j, bytes.count)])
                result += bytes[i..<Swift.min(j + 1, bytes.count)]
                i = j + 1
                continue
            case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
            case UInt8(ascii: ":") where depth == 1 && layerCountKeys.contains(String(decoding: lastString, as: UTF8.self)):
                result.append(c)
                i += 1
                while i < bytes.count && [UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r")].contains(bytes[i]) {
                    result.append(bytes[i])
                    i += 1
                }
                var end = i
                while end < bytes.count && digits.contains(bytes[end]) { end += 1 }
                if end > i {
                    result += Array(String(layers).utf8)
                    i = end
                }
                continue
            default: break
            }
            result.append(c)
            i += 1
        }
        return String(decoding: result, as: UTF8.self)
    }

    /// Weight files and indexes, and (unless `keepingCard`) the model card, are not copied.
    static func isWeightFile(_ name: String, keepingCard: Bool = false) -> Bool {
        let lower = name.lowercased()
        let extensions = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz", ".npy"]
        return extensions.contains { lower.hasSuffix($0) } || lower.hasSuffix(".index.json") || (lower == "readme.md" && !keepingCard)
            || lower == recipeName || lower.hasPrefix(".")
    }

    /// Links may point within the model directory, or, for a Hugging Face cache snapshot,
    /// within the model's cache folder (where the blobs are).
    static func allowedRoot(_ directory: String) -> String {
        let real = realPath(directory) ?? directory
        let parts = real.split(separator: "/", omittingEmptySubsequences: false)
        if parts.count >= 3, parts[parts.count - 2] == "snapshots", parts[parts.count - 3].hasPrefix("models--") {
            return parts.dropLast(2).joined(separator: "/")
        }
        return real
    }

    /// The files to copy from `directory` (as paths and their names under the output), sub-folders
    /// included: links are followed within `root` only, and each folder once (`visited`: real
    /// paths), so a link back to a folder above (a loop) is not walked again.
    static func collect(_ directory: String, root: String, prefix: String, keepingCard: Bool, visited: inout Set<String>,
                        into found: inout [(String, String)]) {
        for entry in listDirectory(directory) where !isWeightFile(entry, keepingCard: keepingCard && prefix.isEmpty) {
            let path = directory + "/" + entry
            guard let real = realPath(path), real == root || real.hasPrefix(root + "/") else { continue }
            switch pathKind(path) {
            case .file: found.append((path, prefix + entry))
            case .directory:
                guard visited.insert(real).inserted else { continue }
                collect(path, root: root, prefix: prefix + entry + "/", keepingCard: keepingCard, visited: &visited, into: &found)
            default: break
            }
        }
    }
}

extension String {
    /// Without leading and trailing white space.
    var trimmingWhitespace: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }

    func trimmingSuffix(_ suffix: Character) -> String {
        var text = self
        while text.last == suffix { text.removeLast() }
        return text
    }

    /// Every occurrence of `target` replaced by `replacement`.
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var result = ""
        var rest = self[...]
        while let range = rest.range(of: target) {
            result += rest[..<range.lowerBound]
            result += replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
