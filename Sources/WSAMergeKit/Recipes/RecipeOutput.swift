#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The files a recipe merge writes beside a directory output: the recipe itself
/// (`wsamerge_recipe.yml`) and, with `tokenizer_source: base`, the base model directory's
/// non-weight files (config, tokenizer, chat template…). Checked before the merge, written after it.
public struct RecipeOutputFiles {
    public static let recipeName = "wsamerge_recipe.yml"

    /// The output directory, or nil when the output is a single file.
    public let directory: String?
    public let recipe: String
    /// Files to copy: source path, path relative to the output directory.
    public let copies: [(source: String, name: String)]
    let force: Bool

    /// Plans the files for `request` (whose `recipe` is set); `tokenizerSource` is the base
    /// model's directory when the recipe asks for its tokenizer.
    public init(_ request: Merger.Request, tokenizerSource: String?) throws {
        recipe = request.recipe ?? ""
        force = request.output.force
        if case .sharded = request.output.layout {
            var dir = request.output.path
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
            throw WSAMergeError.usage("the base model's tokenizer and config files go beside the weights, so the output must be a directory")
        }
        guard pathKind(tokenizerSource) == .directory else {
            throw WSAMergeError.usage("the tokenizer files come from the base model's directory, and '\(tokenizerSource)' is not a directory")
        }
        var found: [(String, String)] = []
        Self.collect(tokenizerSource, root: Self.allowedRoot(tokenizerSource), prefix: "", into: &found)
        copies = found
        if !force {
            for (_, name) in copies where pathKind(directory + "/" + name) != .missing {
                throw WSAMergeError.hinted(.cannotCreate(file: directory + "/" + name, reason: "already exists"), .force)
            }
        }
    }

    /// Writes the recipe and the copies into the output directory (nothing for a file output).
    public func write() throws {
        guard let directory else { return }
        let recipeFile = try OutputFile(destination: directory + "/" + Self.recipeName, force: true, inputs: [], directIO: false)
        try recipeFile.write(recipe)
        try recipeFile.commit()
        for (source, name) in copies {
            var parent = ""
            for part in name.split(separator: "/").dropLast() {
                parent += "/" + part
                try makeDirectory(directory + parent)
            }
            let input = try ReadableFile(path: source)
            let output = try OutputFile(destination: directory + "/" + name, force: force, inputs: [input.identity], directIO: false)
            var offset = 0
            while offset < input.size {
                let count = min(1 << 20, input.size - offset)
                try output.write(try input.readBytes(at: offset, count: count))
                offset += count
            }
            try output.commit()
        }
    }

    /// Weight files and indexes, and the model card, are not copied.
    static func isWeightFile(_ name: String) -> Bool {
        let lower = name.lowercased()
        let extensions = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz", ".npy"]
        return extensions.contains { lower.hasSuffix($0) } || lower.hasSuffix(".index.json") || lower == "readme.md"
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

    static func collect(_ directory: String, root: String, prefix: String, into found: inout [(String, String)]) {
        for entry in listDirectory(directory) where !isWeightFile(entry) {
            let path = directory + "/" + entry
            guard let real = realPath(path), real == root || real.hasPrefix(root + "/") else { continue }
            switch pathKind(path) {
            case .file: found.append((path, prefix + entry))
            case .directory: collect(path, root: root, prefix: prefix + entry + "/", into: &found)
            default: break
            }
        }
    }
}

func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}
