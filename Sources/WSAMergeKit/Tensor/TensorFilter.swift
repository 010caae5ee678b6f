/// `--include` / `--exclude` regular expressions on tensor names (searched anywhere in the name,
/// as `re.search` does): a tensor is selected when it matches some include (or there are none)
/// and matches no exclude.
public struct TensorFilter: @unchecked Sendable {
    private let include: [Regex<AnyRegexOutput>]
    private let exclude: [Regex<AnyRegexOutput>]

    public static let all = TensorFilter()

    private init() {
        include = []
        exclude = []
    }

    public init(include: [String], exclude: [String]) throws {
        func compile(_ pattern: String, _ flag: String) throws -> Regex<AnyRegexOutput> {
            do { return try Regex(pattern) } catch {
                throw WSAMergeError.usage("\(flag) '\(pattern)' is not a valid regular expression")
            }
        }
        self.include = try include.map { try compile($0, "--include") }
        self.exclude = try exclude.map { try compile($0, "--exclude") }
    }

    public func selects(_ name: String) -> Bool {
        (include.isEmpty || include.contains { name.contains($0) }) && !exclude.contains { name.contains($0) }
    }
}
