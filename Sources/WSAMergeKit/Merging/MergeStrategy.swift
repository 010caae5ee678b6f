import CKernels

/// A merge method. Adding one is one new file in `Methods/` with a type conforming to this
/// protocol, and one line in `Strategies.all`.
///
/// The flow: `init(_:)` checks what the method needs and reads what it must know before
/// anything is written (it also runs for `--dry-run`); `measured()` runs the read-only passes
/// over the whole model that are faster done for every tensor side by side (not for
/// `--dry-run`) and returns the merger; `merge` then writes one tensor at a time.
public protocol MergeStrategy: Sendable {
    static var declaration: StrategyDeclaration { get }

    /// Checks the plan and parameters for this method, refusing what it cannot merge.
    init(_ context: MergeContext) throws

    /// Runs whole-model read-only passes and returns what merges each tensor.
    func measured() throws -> any TensorMerge

    /// Provenance written into the output metadata as `wsamerge.<key>`, besides the parameters.
    var provenance: [(String, String)] { get }
}

/// Merges one tensor: streams its inputs as often as the method needs (read-only passes, then
/// one writing pass) and sends the output values, in order, to `output` exactly once.
public protocol TensorMerge: Sendable {
    func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult
}

extension MergeStrategy {
    public var provenance: [(String, String)] { [] }
}

extension MergeStrategy where Self: TensorMerge {
    /// A method without whole-model passes merges with itself.
    public func measured() throws -> any TensorMerge { self }
}

/// What a method is given: the checked plan, its parameters, its extra files and the jobs.
public struct MergeContext: Sendable {
    public let plan: MergePlan
    public let parameters: ResolvedParameters
    /// Per-input checkpoints by file role (`fisher`), in input order.
    public let files: [String: [Checkpoint]]
    /// Shared files by role (`target_scope`).
    public let paths: [String: String]
    /// Worker threads.
    public let jobs: Int

    public init(plan: MergePlan, parameters: ResolvedParameters, files: [String: [Checkpoint]] = [:],
                paths: [String: String] = [:], jobs: Int) {
        self.plan = plan
        self.parameters = parameters
        self.files = files
        self.paths = paths
        self.jobs = jobs
    }

    /// Readers of every input of `item`, in input order (the base not included).
    public func readers(_ item: MergePlan.Item) throws -> [TensorReader] { try plan.readers(item) }

    /// A reader of the base's tensor of `item`.
    public func baseReader(_ item: MergePlan.Item) throws -> TensorReader {
        guard let base = plan.base, let index = item.base else {
            preconditionFailure("\(parameters.declaration.identifier) reads a base the plan does not hold")
        }
        return try base.reader(for: index)
    }

    /// The per-input `weight` of each source of `item`, normalised to sum 1 over the sources
    /// (average, fisher, wsa: finite, ≥ 0, positive sum).
    public func normalizedWeights(_ item: MergePlan.Item) throws -> [Double] {
        let raw = try item.sources.map { try parameters.number("weight", input: $0.input, tensor: item.name) }
        return try Weights.normalized(raw, method: parameters.declaration.identifier, tensor: item.name)
    }
}

/// What happened to one merged tensor, for the report.
public struct TensorMergeResult: Sendable {
    public var method: String
    public var fused: Scope?
    /// Whether some input value was NaN or infinite.
    public var nonFinite = false
    /// Whether the strategy fell back to another method for this tensor (zero std, no target).
    public var fallback = false
    /// Method-specific figures for the report (kept fractions, interpolation factors, branches).
    public var details: [(String, JSON)] = []

    public init(method: String, fused: Scope? = nil, nonFinite: Bool = false, fallback: Bool = false,
                details: [(String, JSON)] = []) {
        self.method = method
        self.fused = fused
        self.nonFinite = nonFinite
        self.fallback = fallback
        self.details = details
    }
}

/// The registry: every strategy `fuse` knows, in the order `wsamerge strategies` lists them.
public enum Strategies {
    public static let all: [any MergeStrategy.Type] = [
        AverageStrategy.self, FisherStrategy.self, WSAStrategy.self,
        TaskVector<TaskArithmetic>.self, TaskVector<TIES>.self, TaskVector<DARELinear>.self, TaskVector<DARETies>.self,
        TaskVector<Breadcrumbs>.self, TaskVector<BreadcrumbsTies>.self, TaskVector<DELLALinear>.self, TaskVector<DELLA>.self,
        PassthroughStrategy.self, SlerpStrategy.self, NuSlerpStrategy.self, MultiSlerpStrategy.self, KarcherStrategy.self,
        ModelStockStrategy.self, NearSwapStrategy.self,
        SCEStrategy.self, ArceeFusionStrategy.self, RAMStrategy.self, RAMPlusTLStrategy.self,
    ]

    /// The strategy called `name` (or by one of its aliases).
    public static func named(_ name: String) -> (any MergeStrategy.Type)? {
        all.first { $0.declaration.identifier == name || $0.declaration.aliases.contains(name) }
    }

    /// Every identifier, then the aliases.
    public static var names: [String] {
        all.map { $0.declaration.identifier } + all.flatMap { $0.declaration.aliases }
    }

    /// The registry as JSON.
    public static var json: JSON { .array(all.map { $0.declaration.json }) }
}

/// A pass that writes `Σ w_k x_k / divisor` (the shared fallback of every strategy; a divisor
/// of 1 divides nothing).
func weightedAverage(_ readers: [TensorReader], weights: [Double], divisor: Double = 1, jobs: Int,
                     output: Lockstep.Output) throws -> Bool {
    var nonFinite = false
    let fused = FusedCombine(.average(weights: weights, divisor: divisor), inputs: readers.map(\.tensor.dtype), output: output.dtype)
    try Lockstep.run(readers, jobs: jobs, output: output, raw: fused?.kernel(false), kernel: { inputs, count, out in
        // ((w_0 x_0 + w_1 x_1) + w_2 x_2) + …: the order of a plain running sum.
        wsk_scale(out, inputs[0], weights[0], count)
        for k in 1..<inputs.count { wsk_axpy(out, inputs[k], weights[k], count) }
        if divisor != 1 { for j in 0..<count { out[j] = out[j] / divisor } }
        return containsNonFinite(out, count)
    }, fold: { flags in if flags.contains(true) { nonFinite = true } })
    return nonFinite
}

/// A writing pass whose kernel fills each block's output from the decoded inputs (told where
/// the block starts); returns whether some output value is NaN or infinite.
func elementwisePass(_ readers: [TensorReader], jobs: Int, output: Lockstep.Output,
                     _ kernel: @escaping @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int,
                                                    _ out: UnsafeMutablePointer<Double>, _ position: Int) -> Void) throws -> Bool {
    var nonFinite = false
    try Lockstep.run(readers, jobs: jobs, output: output, positioned: { inputs, count, out, position in
        kernel(inputs, count, out, position)
        return containsNonFinite(out, count)
    }, fold: { if $0.contains(true) { nonFinite = true } })
    return nonFinite
}
