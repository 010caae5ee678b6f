import CKernels

/// The task-vector family (mergekit's `task_arithmetic`, `ties`, `dare_linear`, `dare_ties`,
/// `breadcrumbs`, `breadcrumbs_ties`, `della_linear`, `della`): one pipeline over the task vectors
/// `δ_i = x_i − b` of the inputs against the base, per output tensor:
/// ```
/// d_i = sparsify(δ_i)        D_i = w_i · d_i
/// electing methods:  S = Σ D_i,  s = +1 where S ≥ 0 else −1,  keep_i = sign(D_i) == s
///                    mixed = Σ keep_i D_i,  divisor = Σ keep_i w_i (1 where exactly 0)
/// others:            mixed = Σ D_i,  divisor = Σ w_i (1 where |Σ w_i| < 1e-8)
/// out = b + λ · (normalize ? mixed / divisor : mixed)
/// ```
/// Each method is a `TaskVectorKind`: which sparsifier, whether it elects signs, its defaults.
///
/// Passes per tensor: the sparsifier's read-only passes (`keepRules`: for magnitude and
/// outliers one sampled selection pass over every input at once, see `Selection`; for DARE's
/// rescale one pass of sums), then one writing pass on the stored elements (`wsk_tv_merge`),
/// whose blocks go through decoded float64 (`KeepRule.trim`, `Combiner.apply`) when the C kernel
/// cannot finish them. DELLA ranks row by row (`RankedRandom`): its rescale pass keeps the keep
/// marks as bits for that writing pass, or, without a rescale or when the bits would not fit in
/// memory, it ranks in a writing pass of its own.
public struct TaskVector<Kind: TaskVectorKind>: MergeStrategy, TensorMerge {
    public static var declaration: StrategyDeclaration {
        var parameters = [
            ParameterDeclaration("weight", .number, .perInput, default: nil, help: "The task vector's weight w_i (any sign; a negative weight flips its vote)."),
            ParameterDeclaration("density", .number, .perInput, default: .number(1),
                                 help: Kind.sparsifier == .none ? "Accepted for mergekit recipes; unused." : "Fraction of the task vector kept."),
        ]
        if Kind.sparsifier == .outliers {
            parameters.append(ParameterDeclaration("gamma", .number, .perInput, default: .number(0.01), help: "Fraction of the largest |δ| removed as outliers."))
        }
        if Kind.sparsifier == .rankedRandom {
            parameters.append(ParameterDeclaration("epsilon", .number, .perInput, default: .number(0.15),
                                                   help: "Keep probabilities span density ± epsilon by magnitude rank in each row."))
        }
        parameters.append(ParameterDeclaration("lambda", .number, .shared, default: .number(1), help: "Scale of the merged task vector."))
        parameters.append(ParameterDeclaration("normalize", .bool, .shared, default: .bool(Kind.normalize), help: "Divide by the sum of the (elected) weights."))
        if let rescale = Kind.rescale {
            parameters.append(ParameterDeclaration("rescale", .bool, .shared, default: .bool(rescale),
                                                   help: "Multiply kept values by ‖δ‖₁ / ‖kept‖₁ (unless either is < 1e-7)."))
        }
        if Kind.sparsifier == .random || Kind.sparsifier == .rankedRandom {
            parameters.append(ParameterDeclaration("seed", .integer, .shared, default: .number(0), help: "Seed of the random draws."))
        }
        parameters.append(ParameterDeclaration("int8_mask", .bool, .shared, default: .bool(false), help: "Accepted for mergekit recipes; no numeric effect."))
        return StrategyDeclaration(identifier: Kind.identifier, summary: Kind.summary, base: .required, inputs: 0...Int.max,
                                   parameters: parameters)
    }

    let context: MergeContext

    /// Checks every merged tensor's parameters before anything is read in bulk.
    public init(_ context: MergeContext) throws {
        self.context = context
        for item in context.plan.items where item.action == .merge {
            _ = try settings(item)
        }
    }

    /// The parameters of one tensor, per source (the inputs that hold it).
    struct Settings: Sendable {
        var weights: [Double] = []
        var densities: [Double] = []
        var gammas: [Double] = []
        var epsilons: [Double] = []
        var lambda = 1.0
        var normalize = false
        var rescale = false
        var seed: UInt64 = 0
    }

    func settings(_ item: MergePlan.Item) throws -> Settings {
        let p = context.parameters, name = item.name
        var s = Settings()
        for source in item.sources {
            s.weights.append(try p.number("weight", input: source.input, tensor: name))
            s.densities.append(try p.number("density", input: source.input, tensor: name))
            if Kind.sparsifier == .outliers { s.gammas.append(try p.number("gamma", input: source.input, tensor: name)) }
            if Kind.sparsifier == .rankedRandom { s.epsilons.append(try p.number("epsilon", input: source.input, tensor: name)) }
        }
        if let gamma = s.gammas.first(where: { $0 < 0 }) {
            throw WSAMergeError.usage("\(Kind.identifier): gamma must be ≥ 0 (got \(gamma), tensor '\(name)')")
        }
        s.lambda = try p.number("lambda", tensor: name)
        s.normalize = try p.bool("normalize", tensor: name)
        if Kind.rescale != nil { s.rescale = try p.bool("rescale", tensor: name) }
        if Kind.sparsifier == .random || Kind.sparsifier == .rankedRandom {
            let seed = try p.integer("seed", tensor: name)
            guard seed >= 0 else { throw WSAMergeError.usage("\(Kind.identifier): seed must be a whole number from 0 to 2^63 − 1") }
            s.seed = UInt64(seed)
        }
        if Kind.sparsifier == .rankedRandom {
            for (density, epsilon) in zip(s.densities, s.epsilons) where density > 0 && density < 1 {
                guard density - epsilon > 0, density + epsilon < 1 else {
                    throw WSAMergeError.malformed(file: context.plan.base?.path ?? "", tensor: name,
                                                  reason: "\(Kind.identifier) needs 0 < density − epsilon and density + epsilon < 1 (density \(density), epsilon \(epsilon))")
                }
            }
        }
        return s
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let s = try settings(item)
        let n = item.sources.count
        let count = item.output.elementCount
        let combiner = Combiner(weights: s.weights, electsSigns: Kind.electsSigns, normalize: s.normalize, lambda: s.lambda)
        // Read-only passes: each input's kept set (and rescale factor); then one writing pass.
        let rules: [KeepRule]
        if Kind.sparsifier == .rankedRandom {
            let ranked = RankedRandom(item: item, settings: s, context: context)
            guard let held = try ranked.heldRules() else {
                return try ranked.merge(combiner: combiner, output: output, electsSigns: Kind.electsSigns)
            }
            rules = held
        } else {
            rules = try keepRules(item, settings: s)
        }
        let readers = try context.readers(item) + [try context.baseReader(item)]
        var tally = Tally(inputs: n)
        let kinds = readers.compactMap(\.tensor.dtype.rawKind)
        var raw: Lockstep.PositionedRawKernel<Tally>?
        if kinds.count == readers.count, let outKind = output.dtype.rawKind {
            raw = { inputs, count, out, position in
                combiner.merge(stored: inputs, kinds: kinds, rules: rules, count: count, at: position, outKind: outKind, into: out!)
            }
        }
        try Lockstep.run(readers, jobs: context.jobs, output: output, raw: raw, positioned: { inputs, count, out, position in
            var block = Tally(inputs: n)
            for k in 0..<n { block.kept[k] = rules[k].trim(inputs[k], base: inputs[n], count: count, at: position) }
            block.add(combiner.apply(trimmed: Array(inputs[0..<n]), base: inputs[n], count: count, into: out))
            return block
        }, fold: { blocks in for block in blocks { tally.add(block) } })
        return TensorMergeResult(method: Kind.identifier, nonFinite: tally.nonFinite, details: tally.details(count: count, electsSigns: Kind.electsSigns))
    }

    /// Every input's sparsifier for `item`, from read-only passes over the task vectors `|δ_k|`:
    /// one pass (plus a small sample) selects the ranks of every input at once.
    func keepRules(_ item: MergePlan.Item, settings s: Settings) throws -> [KeepRule] {
        let n = item.sources.count, count = item.output.elementCount
        var rules = [KeepRule](repeating: KeepRule(), count: n)
        switch Kind.sparsifier {
        case .none, .rankedRandom:
            return rules
        case .random:
            for k in 0..<n where s.densities[k] < 1 {
                rules[k].draws = (Draws(seed: s.seed, name: item.name, input: item.sources[k].input), s.densities[k])
            }
            if s.rescale {
                let drawing = (0..<n).filter { rules[$0].draws != nil }
                let draws = drawing.map { rules[$0].draws! }
                var total = [Double](repeating: 0, count: drawing.count), kept = total
                let readers = try drawing.map { try context.plan.inputs[item.sources[$0].input].reader(for: item.sources[$0].index) }
                    + [try context.baseReader(item)]
                // On the stored elements where every tensor is read in place, else decoded.
                let kinds = readers.compactMap(\.tensor.dtype.rawKind)
                /// Every drawing input's two sums over a block.
                @Sendable func sums(_ sum: (_ i: Int, _ total: inout Double, _ kept: inout Double) -> Void) -> [Double] {
                    var sums: [Double] = []
                    for i in draws.indices {
                        var total = 0.0, kept = 0.0
                        sum(i, &total, &kept)
                        sums += [total, kept]
                    }
                    return sums
                }
                var stored: Lockstep.PositionedRawKernel<[Double]>?
                if kinds.count == readers.count {
                    stored = { inputs, count, _, position in
                        sums { i, total, kept in
                            wsk_draw_sums(inputs[i], kinds[i], inputs[draws.count], kinds[draws.count], count, draws[i].0.key,
                                          Int64(position), draws[i].1, &total, &kept)
                        }
                    }
                }
                let f64 = DType.F64.rawKind!
                try Lockstep.run(readers, jobs: context.jobs, output: nil, raw: stored, positioned: { inputs, count, _, position in
                    sums { i, total, kept in
                        wsk_draw_sums(inputs[i], f64, inputs[draws.count], f64, count, draws[i].0.key, Int64(position), draws[i].1,
                                      &total, &kept)
                    }
                }, fold: { blocks in
                    for block in blocks {
                        for i in drawing.indices {
                            total[i] += block[2 * i]
                            kept[i] += block[2 * i + 1]
                        }
                    }
                })
                for (i, k) in drawing.enumerated() { rules[k].scale = Self.rescale(total: total[i], kept: kept[i]) }
            }
            return rules
        case .magnitude, .outliers:
            // The ascending positions each input's window is bounded by.
            var wanted: [(input: Int, positions: [Int], window: ([Selection.Rank]) -> RankWindow)] = []
            for k in 0..<n where s.densities[k] < 1 {
                let density = s.densities[k]
                if Kind.sparsifier == .magnitude {
                    if density <= 0 || count == 0 { rules[k].window = RankWindow.none; continue }
                    let kept = Swift.max(1, Int(density * Double(count)))
                    if kept >= count { continue }
                    wanted.append((k, [count - kept], { RankWindow.largest(kept, count: count, cut: $0[0]) }))
                } else {
                    let t = Swift.max(0, Int(density * Double(count)))
                    let top = Swift.max(0, Int(s.gammas[k] * Double(count)))
                    let bottom = Swift.max(0, count - t - top), end = Swift.min(count, bottom + t)
                    if bottom >= end { rules[k].window = RankWindow.none; continue }
                    wanted.append((k, [bottom, end - 1], { RankWindow.positions(bottom, end, low: $0[0], high: $0[1]) }))
                }
            }
            if !wanted.isEmpty {
                let ranks = try Selection.ranks(wanted.map(\.positions), of: deltaPass(item, inputs: wanted.map(\.input)))
                for (i, want) in wanted.enumerated() { rules[want.input].window = want.window(ranks[i]) }
            }
            for k in 0..<n where rules[k].window != nil && (rules[k].window!.needsCensus || s.rescale) {
                let sums = try rules[k].window!.census(deltaPass(item, inputs: [k]))
                if s.rescale { rules[k].scale = Self.rescale(total: sums.total, kept: sums.kept) }
            }
            return rules
        }
    }

    /// `‖δ‖₁ / ‖kept‖₁`, or 1 when either is below 1e-7.
    static func rescale(total: Double, kept: Double) -> Double {
        total < 1e-7 || kept < 1e-7 ? 1 : total / kept
    }

    /// The key pass `|x_k − b|` over `item`, one stream per input k of `inputs` (reading those
    /// inputs and the base).
    func deltaPass(_ item: MergePlan.Item, inputs ks: [Int]) -> KeyPass {
        let plan = context.plan, sources = ks.map { item.sources[$0] }, base = item.base!
        return KeyPass(differences: { try sources.map { try plan.inputs[$0.input].reader(for: $0.index) } + [try plan.base!.reader(for: base)] },
                       count: item.output.elementCount, streams: ks.count, jobs: context.jobs)
    }
}

/// One member of the task-vector family.
public protocol TaskVectorKind: Sendable {
    static var identifier: String { get }
    static var summary: String { get }
    static var sparsifier: Sparsifier { get }
    static var electsSigns: Bool { get }
    static var normalize: Bool { get }
    /// The `rescale` default, or nil when the method has no such parameter.
    static var rescale: Bool? { get }
}

/// How a task vector is trimmed before it is weighted.
public enum Sparsifier: Sendable {
    /// Kept whole.
    case none
    /// The `k = max(1, ⌊density·N⌋)` largest |δ| (ties: earliest in C order).
    case magnitude
    /// Breadcrumbs: sorted positions `bottom … bottom+t−1` of |δ| ascending, `t = ⌊density·N⌋`,
    /// `bottom = max(0, N − t − ⌊gamma·N⌋)`.
    case outliers
    /// DARE: element j kept iff `u_j < density`.
    case random
    /// DELLA: kept iff `u_j < p_j`, `p` rising with the magnitude rank within the row.
    case rankedRandom
}

public enum TaskArithmetic: TaskVectorKind {
    public static let identifier = "task_arithmetic", sparsifier = Sparsifier.none, electsSigns = false, normalize = false
    public static let rescale: Bool? = nil
    public static let summary = "Task arithmetic: out = b + λ Σ w_i (x_i − b)."
}

public enum TIES: TaskVectorKind {
    public static let identifier = "ties", sparsifier = Sparsifier.magnitude, electsSigns = true, normalize = true
    public static let rescale: Bool? = false
    public static let summary = "TIES: keep each task vector's largest |δ|, elect signs, average the agreeing values."
}

public enum DARELinear: TaskVectorKind {
    public static let identifier = "dare_linear", sparsifier = Sparsifier.random, electsSigns = false, normalize = false
    public static let rescale: Bool? = true
    public static let summary = "DARE: drop task-vector elements at random (keep probability density), rescale, add."
}

public enum DARETies: TaskVectorKind {
    public static let identifier = "dare_ties", sparsifier = Sparsifier.random, electsSigns = true, normalize = false
    public static let rescale: Bool? = true
    public static let summary = "DARE with TIES's sign election."
}

public enum Breadcrumbs: TaskVectorKind {
    public static let identifier = "breadcrumbs", sparsifier = Sparsifier.outliers, electsSigns = false, normalize = false
    public static let rescale: Bool? = false
    public static let summary = "Model Breadcrumbs: drop the smallest and the largest |δ| (outliers), add the rest."
}

public enum BreadcrumbsTies: TaskVectorKind {
    public static let identifier = "breadcrumbs_ties", sparsifier = Sparsifier.outliers, electsSigns = true, normalize = false
    public static let rescale: Bool? = false
    public static let summary = "Model Breadcrumbs with TIES's sign election."
}

public enum DELLALinear: TaskVectorKind {
    public static let identifier = "della_linear", sparsifier = Sparsifier.rankedRandom, electsSigns = false, normalize = false
    public static let rescale: Bool? = true
    public static let summary = "DELLA: drop at random with probabilities ranked by magnitude in each row, rescale, add."
}

public enum DELLA: TaskVectorKind {
    public static let identifier = "della", sparsifier = Sparsifier.rankedRandom, electsSigns = true, normalize = true
    public static let rescale: Bool? = true
    public static let summary = "DELLA with TIES's sign election."
}

/// Which elements of one input's task vector are kept, and the factor they are scaled by.
struct KeepRule: Sendable {
    /// Kept by rank of |δ| (magnitude, outliers); nil with no window.
    var window: RankWindow?
    /// Kept by random draw: `u_j < density`.
    var draws: (Draws, Double)?
    /// Kept by mark: bit j % 8 of byte j / 8 for the element at C-order index j (DELLA's masks).
    var marks: RawBuffer?
    var scale = 1.0

    /// `x[j] ← kept ? (x[j] − b[j])·scale : 0` over a block starting at C-order `position`;
    /// returns how many were kept.
    func trim(_ x: UnsafeMutablePointer<Double>, base b: UnsafePointer<Double>, count: Int, at position: Int) -> Int {
        if let window {
            var cursor = window.kernelWindow(at: position)
            return Int(wsk_trim_window(x, b, count, scale, &cursor))
        }
        if let (draws, density) = draws {
            return Int(wsk_trim_draws(x, b, count, scale, draws.key, Int64(position), density))
        }
        if let marks {
            return Int(wsk_trim_bits(x, b, count, scale, marks.bits(from: position)))
        }
        return Int(wsk_trim_all(x, b, count, scale))
    }
}

/// Elects signs, sums and normalises the weighted, trimmed task vectors of a block.
struct Combiner: Sendable {
    let weights: [Double]
    let electsSigns: Bool
    let normalize: Bool
    let lambda: Double

    /// The divisor of the methods that do not elect: Σ w_i, or 1 when |Σ w_i| < 1e-8.
    var plainDivisor: Double {
        var sum = 0.0
        for w in weights { sum += w }
        return Swift.abs(sum) < 1e-8 ? 1 : sum
    }

    /// `out[j] = b[j] + λ·mixed[j]` from the trimmed task vectors `d_k` (unweighted); see
    /// `wsk_tv_combine`.
    func apply(trimmed d: [UnsafeMutablePointer<Double>], base b: UnsafePointer<Double>, count: Int,
               into out: UnsafeMutablePointer<Double>) -> Tally {
        var tally = Tally(inputs: 0)
        var dropped: Int64 = 0
        let pointers: [UnsafeMutablePointer<Double>?] = d
        let nonFinite = wsk_tv_combine(pointers, weights, d.count, b, count, electsSigns ? 1 : 0, normalize ? 1 : 0, lambda,
                                       plainDivisor, out, &dropped)
        tally.dropped = Int(dropped)
        tally.nonFinite = nonFinite != 0
        return tally
    }

    /// The whole merge of a block on the stored elements (`stored[k]` of input k, the base last),
    /// encoded as `outKind` into `out` (`wsk_tv_merge`); nil when the block must go through the
    /// decoded path.
    func merge(stored: [UnsafeRawPointer], kinds: [Int32], rules: [KeepRule], count: Int, at position: Int, outKind: Int32,
               into out: UnsafeMutableRawPointer) -> Tally? {
        let n = rules.count
        var inputs = (0..<n).map { k in
            var input = wsk_tv_input()
            input.x = stored[k]
            input.kind = kinds[k]
            input.weight = weights[k]
            input.scale = rules[k].scale
            if let window = rules[k].window {
                input.rule = Int32(WSK_KEEP_WINDOW)
                input.window = window.kernelWindow(at: position)
            } else if let (draws, density) = rules[k].draws {
                input.rule = Int32(WSK_KEEP_DRAWS)
                input.key = draws.key
                input.density = density
            } else if let marks = rules[k].marks {
                input.rule = Int32(WSK_KEEP_BITS)
                input.bits = UnsafePointer(marks.bits(from: position))
            } else {
                input.rule = Int32(WSK_KEEP_ALL)
            }
            return input
        }
        var dropped: Int64 = 0
        let redo = wsk_tv_merge(&inputs, n, stored[n], kinds[n], count, Int64(position), electsSigns ? 1 : 0, normalize ? 1 : 0,
                                lambda, plainDivisor, outKind, out, &dropped)
        guard redo == 0 else { return nil }
        var tally = Tally(inputs: n)
        for k in 0..<n { tally.kept[k] = Int(inputs[k].kept) }
        tally.dropped = Int(dropped)
        return tally
    }
}

/// What a merge pass counts for the report.
struct Tally: Sendable {
    var kept: [Int]
    var dropped = 0
    var nonFinite = false

    init(inputs: Int) { kept = [Int](repeating: 0, count: inputs) }

    mutating func add(_ other: Tally) {
        for k in other.kept.indices { kept[k] += other.kept[k] }
        dropped += other.dropped
        nonFinite = nonFinite || other.nonFinite
    }

    func details(count: Int, electsSigns: Bool) -> [(String, JSON)] {
        let n = Double(Swift.max(count, 1))
        var fields: [(String, JSON)] = [("kept", .array(kept.map { .double(Double($0) / n) }))]
        if electsSigns { fields.append(("sign_dropped", .double(Double(dropped) / n))) }
        return fields
    }
}

/// DELLA's ranked random sparsifier, row by row: ranks run along axis 1 (a row of a matrix; a
/// 1-D tensor is one row; for rank ≥ 3 the fibres along axis 1), so each slab `x[a, …]` is held
/// at a time: `p = density − ε + 2ε·(rank − 1)/(L − 1)` (rank 1 = smallest |δ|, ties in C order;
/// `density − ε` when L = 1), kept iff `u_j < p_j` with j the element's C-order index.
struct RankedRandom: Sendable {
    let item: MergePlan.Item
    let settings: TaskVector<DELLA>.Settings
    let context: MergeContext
    /// Slabs, row length L (axis 1) and the stride between a fibre's elements.
    let slabs: Int, length: Int, stride: Int
    /// Per input, p by rank (`wsk_della_probabilities`; empty when density ≥ 1 or ≤ 0).
    let probabilities: [[Double]]
    /// Per input, its random draws.
    let draws: [Draws]

    init<K>(item: MergePlan.Item, settings: TaskVector<K>.Settings, context: MergeContext) {
        self.item = item
        self.settings = TaskVector<DELLA>.Settings(weights: settings.weights, densities: settings.densities, gammas: settings.gammas,
                                                   epsilons: settings.epsilons, lambda: settings.lambda, normalize: settings.normalize,
                                                   rescale: settings.rescale, seed: settings.seed)
        self.context = context
        draws = item.sources.map { Draws(seed: settings.seed, name: item.name, input: $0.input) }
        let shape = item.output.shape
        switch shape.count {
        case 0: (slabs, length, stride) = (1, 1, 1)
        case 1: (slabs, length, stride) = (1, shape[0], 1)
        default: (slabs, length, stride) = (shape[0], shape[1], shape[2...].reduce(1, *))
        }
        let length = self.length
        probabilities = zip(settings.densities, settings.epsilons).map { density, epsilon in
            guard density > 0 && density < 1 else { return [] }
            return [Double](unsafeUninitializedCapacity: length) { p, initialized in
                wsk_della_probabilities(length, density, epsilon, p.baseAddress)
                initialized = length
            }
        }
    }

    var slabElements: Int { length * stride }

    /// Words of `mask`'s scratch (the ranking's keys and buckets for one fibre).
    var scratchWords: Int { 7 * length }

    /// Bytes of keep marks the rescale pass may hold for the writing pass (a bit per element and
    /// input); beyond it the writing pass ranks again.
    static var maskBudget: Int {
        #if DEBUG
        if let maskBudgetOverride { return maskBudgetOverride }
        #endif
        return 64 << 20
    }

    #if DEBUG
    /// Tests set it to 0 to rank again in the writing pass.
    @TaskLocal static var maskBudgetOverride: Int?
    #endif

    /// Marks in `keep` which elements of input `k`'s slab `a` are kept, from its task vector
    /// `x − b`, both stored as `dtypes` (BF16, F16, F32 or F64; `wsk_della_mask` per fibre, its
    /// `scratch` of `scratchWords`).
    func mask(_ x: UnsafeRawPointer, base b: UnsafeRawPointer, _ dtypes: (DType, DType), input k: Int, slab a: Int,
              keep: UnsafeMutablePointer<UInt8>, scratch: UnsafeMutablePointer<UInt64>) {
        let density = settings.densities[k]
        let count = slabElements
        if density >= 1 { keep.update(repeating: 1, count: count); return }
        if density <= 0 { keep.update(repeating: 0, count: count); return }
        let key = draws[k].key
        let (kind, baseKind) = (dtypes.0.rawKind!, dtypes.1.rawKind!)
        let (width, baseWidth) = (dtypes.0.byteWidth!, dtypes.1.byteWidth!)
        probabilities[k].withUnsafeBufferPointer { p in
            for r in 0..<stride {
                wsk_della_mask(x + r * width, kind, b + r * baseWidth, baseKind, length, stride, key, Int64(a * count + r),
                               p.baseAddress, keep + r, scratch)
            }
        }
    }

    /// Streams `readers` in groups of whole slabs: `body(values, firstSlab, slabs)`, `values[k]`
    /// holding input k's slabs one after another, decoded to float64 when `decoded`, else as
    /// stored.
    func groups(_ readers: [TensorReader], decoded: Bool, _ body: ([RawBuffer], Int, Int) throws -> Void) throws {
        let perGroup = Swift.max(1, (1 << 18) / Swift.max(slabElements, 1))
        let capacity = Swift.min(perGroup, slabs) * slabElements
        let raw = readers.map { RawBuffer(byteCount: capacity * ($0.tensor.dtype.byteWidth ?? 1)) }
        let values = decoded ? readers.map { _ in RawBuffer(byteCount: capacity * 8) } : nil
        for first in Swift.stride(from: 0, to: slabs, by: perGroup) {
            let count = Swift.min(perGroup, slabs - first)
            if let values {
                try Lockstep.readDecoded(readers, count: count * slabElements, raw: raw, into: values, jobs: context.jobs)
            } else {
                try Lockstep.readGroup(readers, count: count * slabElements, into: raw, jobs: context.jobs)
            }
            try body(values ?? raw, first, count)
        }
    }

    /// The inputs that are ranked (0 < density < 1).
    var ranked: [Int] { settings.densities.indices.filter { settings.densities[$0] > 0 && settings.densities[$0] < 1 } }

    /// The family's keep rules from the rescale pass: each ranked input's marks (a bit per
    /// element, in C order) and rescale factor. Nil, so that `merge` ranks in its writing pass,
    /// without a rescale (that one pass then does it all), when the marks would not fit in
    /// `maskBudget`, or when its rows are empty.
    func heldRules() throws -> [KeepRule]? {
        let count = item.output.elementCount, ranked = self.ranked
        guard settings.rescale, slabElements > 0, (count + 7) / 8 * ranked.count <= Self.maskBudget else { return nil }
        var rules = [KeepRule](repeating: KeepRule(), count: item.sources.count)
        for k in rules.indices where settings.densities[k] <= 0 {  // u_j < 0 keeps none
            rules[k].draws = (draws[k], 0)
        }
        let marks = ranked.map { _ in RawBuffer(byteCount: (count + 7) / 8) }
        for (i, scale) in try rescales(marks: marks).enumerated() {
            rules[ranked[i]].marks = marks[i]
            rules[ranked[i]].scale = scale
        }
        return rules
    }

    /// The read-only pass over every ranked input at once: each one's `‖δ‖₁ / ‖kept‖₁` (slab sums
    /// added in slab order), and its keep marks into `marks` when given.
    func rescales(marks: [RawBuffer]?) throws -> [Double] {
        let ranked = self.ranked, size = slabElements
        guard !ranked.isEmpty else { return [] }
        var total = [Double](repeating: 0, count: ranked.count), kept = total
        let readers = try ranked.map { try context.plan.inputs[item.sources[$0].input].reader(for: item.sources[$0].index) }
            + [try context.baseReader(item)]
        // The stored elements in place when the kernels read every dtype, else decoded.
        var inPlace = readers.allSatisfy { $0.tensor.dtype.rawKind != nil }
        #if DEBUG
        inPlace = inPlace && Lockstep.rawKernelsEnabled
        #endif
        let dtypes = readers.map { inPlace ? $0.tensor.dtype : DType.F64 }
        var keeps: [RawBuffer] = []  // per ranked input, a group's keep marks as bytes
        try groups(readers, decoded: !inPlace) { values, first, slabs in
            if keeps.isEmpty { keeps = ranked.map { _ in RawBuffer(byteCount: slabs * size) } }
            let keep = keeps
            let sums = try parallelMap(sizes: [Int](repeating: size, count: slabs), jobs: context.jobs) { s, _ -> [Double] in
                let base = dtypes[ranked.count], b = values[ranked.count].base + s * size * base.byteWidth!
                let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: scratchWords)
                defer { scratch.deallocate() }
                var sums: [Double] = []
                for (i, k) in ranked.enumerated() {
                    let x = values[i].base + s * size * dtypes[i].byteWidth!
                    let marks = keep[i].bytes(slabs * size) + s * size
                    mask(x, base: b, (dtypes[i], base), input: k, slab: first + s, keep: marks, scratch: scratch)
                    var total = 0.0, kept = 0.0
                    wsk_mark_sums(x, dtypes[i].rawKind!, b, base.rawKind!, marks, size, &total, &kept)
                    sums += [total, kept]
                }
                return sums
            }
            for sum in sums {
                for i in ranked.indices {
                    total[i] += sum[2 * i]
                    kept[i] += sum[2 * i + 1]
                }
            }
            if let marks {
                for i in ranked.indices { wsk_pack_bits(keep[i].bytes(slabs * size), slabs * size, marks[i].bits(from: 0), first * size) }
            }
        }
        return ranked.indices.map { TaskVector<DELLA>.rescale(total: total[$0], kept: kept[$0]) }
    }

    /// The merge in one writing pass that ranks as it goes (see `heldRules`), after the rescale
    /// pass when there is a rescale.
    func merge(combiner: Combiner, output: Lockstep.Output, electsSigns: Bool) throws -> TensorMergeResult {
        let n = item.sources.count, size = slabElements, jobs = context.jobs
        let method = electsSigns ? DELLA.identifier : DELLALinear.identifier
        guard size > 0 else { return TensorMergeResult(method: method, details: Tally(inputs: n).details(count: 0, electsSigns: electsSigns)) }
        var scales = [Double](repeating: 1, count: n)
        if settings.rescale {
            for (k, scale) in zip(ranked, try rescales(marks: nil)) { scales[k] = scale }
        }
        // The writing pass: slabs side by side, written in order.
        var tally = Tally(inputs: n)
        let width = output.dtype.byteWidth ?? 8
        let factors = scales
        var encoded: RawBuffer?
        try groups(try context.readers(item) + [try context.baseReader(item)], decoded: true) { values, first, count in
            if encoded == nil { encoded = RawBuffer(byteCount: count * size * width) }
            let target = encoded!
            let tallies = try parallelMap(sizes: [Int](repeating: size, count: count), jobs: jobs) { s, _ -> Tally in
                var tally = Tally(inputs: n)
                let b = UnsafePointer(values[n].doubles((s + 1) * size) + s * size)
                let keep = UnsafeMutablePointer<UInt8>.allocate(capacity: size)
                let y = UnsafeMutablePointer<Double>.allocate(capacity: size)
                let scratch = UnsafeMutablePointer<UInt64>.allocate(capacity: scratchWords)
                defer { keep.deallocate(); y.deallocate(); scratch.deallocate() }
                var trimmed: [UnsafeMutablePointer<Double>] = []
                for k in 0..<n {
                    let x = values[k].doubles((s + 1) * size) + s * size
                    mask(x, base: b, (.F64, .F64), input: k, slab: first + s, keep: keep, scratch: scratch)
                    tally.kept[k] += Int(wsk_trim_mask(x, b, size, factors[k], keep))
                    trimmed.append(x)
                }
                tally.add(combiner.apply(trimmed: trimmed, base: b, count: size, into: y))
                output.dtype.encode(y, count: size, into: target.base + s * size * width)
                return tally
            }
            for t in tallies { tally.add(t) }
            try output.writer.write(UnsafeRawBufferPointer(target.prefix(count * size * width)))
        }
        return TensorMergeResult(method: method, nonFinite: tally.nonFinite,
                                 details: tally.details(count: item.output.elementCount, electsSigns: electsSigns))
    }
}
