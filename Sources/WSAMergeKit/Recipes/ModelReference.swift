#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a recipe's model reference is read from: a local path as it is, or a Hugging Face id
/// (`org/name`, optionally `org/name@revision`) as its snapshot in the local Hugging Face cache.
/// wsamerge never downloads.
public struct ModelResolver: Sendable {
    /// The cache's `hub` folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    public let hub: String?

    public init(hub: String?) { self.hub = hub }

    /// The cache named by this process's environment.
    public static var environment: ModelResolver {
        func variable(_ name: String) -> String? {
            guard let value = getenv(name) else { return nil }
            let text = String(cString: value)
            return text.isEmpty ? nil : text
        }
        if let cache = variable("HF_HUB_CACHE") { return ModelResolver(hub: cache) }
        if let home = variable("HF_HOME") { return ModelResolver(hub: home + "/hub") }
        if let home = variable("HOME") { return ModelResolver(hub: home + "/.cache/huggingface/hub") }
        return ModelResolver(hub: nil)
    }

    /// Whether `reference` reads as a Hugging Face id rather than a path.
    public static func isHubID(_ reference: String) -> Bool {
        let id = reference.split(separator: "@", maxSplits: 1).first.map(String.init) ?? reference
        let parts = id.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        return parts.allSatisfy { part in
            !part.isEmpty && part != "." && part != ".." && !part.hasPrefix(".")
                && part.allSatisfy { $0.isLetter || $0.isNumber || "-_.".contains($0) }
        }
    }

    /// The local path `reference` names.
    ///
    /// - Throws: `.missingInput` for a Hugging Face id that is not in the cache.
    public func resolve(_ reference: String) throws -> String {
        if pathKind(reference) == .missing {
            // mergekit's `model+adapter`: split at the first `+` whose model part is a path or a
            // Hugging Face id, each part resolved; `CheckpointReader` reads the model with the
            // LoRA adapter merged in.
            for plus in reference.indices where reference[plus] == "+" && plus != reference.startIndex {
                let model = String(reference[..<plus]), adapter = String(reference[reference.index(after: plus)...])
                guard pathKind(model) != .missing || Self.isHubID(model) else { continue }
                return try resolve(model) + "+" + resolve(adapter)
            }
        }
        if pathKind(reference) != .missing || !Self.isHubID(reference) { return reference }
        let parts = reference.split(separator: "@", maxSplits: 1).map(String.init)
        let id = parts[0], revision = parts.count > 1 ? parts[1] : "main"
        let refusal = WSAMergeError.missingInput(
            file: reference,
            reason: "no such file or directory, and not in the Hugging Face cache\(hub.map { " (\($0))" } ?? ""): wsamerge reads local files only; download the model first (for example `hf download \(id)`) or give its path")
        guard let hub else { throw refusal }
        let repo = hub + "/models--" + id.split(separator: "/").joined(separator: "--")
        let snapshots = repo + "/snapshots"
        guard pathKind(snapshots) == .directory else { throw refusal }
        if pathKind(snapshots + "/" + revision) == .directory { return snapshots + "/" + revision }
        if let commit = readSmallText(repo + "/refs/" + revision)?.trimmingWhitespace, !commit.isEmpty,
           pathKind(snapshots + "/" + commit) == .directory {
            return snapshots + "/" + commit
        }
        let all = listDirectory(snapshots).filter { pathKind(snapshots + "/" + $0) == .directory }
        if parts.count == 1 && all.count == 1 { return snapshots + "/" + all[0] }
        throw WSAMergeError.missingInput(
            file: reference,
            reason: "the Hugging Face cache holds \(all.isEmpty ? "no snapshot" : "snapshots \(all.joined(separator: ", "))") but none for revision '\(revision)' (\(repo))")
    }
}

/// The text of a small file (a cache ref), or nil.
func readSmallText(_ path: String) -> String? {
    guard pathKind(path) == .file, let file = try? ReadableFile(path: path), file.size <= 4096,
          let bytes = try? file.readBytes(at: 0, count: file.size) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}
