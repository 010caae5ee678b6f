import CKernels

/// How Fisher values are scaled before weighting.
public enum FisherNormalize: String, CaseIterable, Sendable {
    /// `c_i = w_i / ‖F_i‖₂`, the L2 norm of model i's Fisher over all merged tensors.
    case global
    /// `c_i = w_i`.
    case none
}

/// Fisher-weighted average (Matena & Raffel 2022), with one diagonal Fisher checkpoint per input:
/// ```
/// out = Σ c_i (F_i + ε) x_i / Σ c_i (F_i + ε)
/// ```
/// `ε` (`--fisher-epsilon`) is added to every element; `c_i` follows `--fisher-normalize`.
public struct FisherStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "fisher",
        summary: "Fisher-weighted average: out = Σ c_i (F_i + ε) x_i / Σ c_i (F_i + ε).",
        base: .none,
        files: [FileRole(name: "fisher", scope: .perInput, required: true,
                         help: "One Fisher checkpoint per input (same tensor names and shapes, values ≥ 0).")],
        parameters: [
            ParameterDeclaration("weight", .number, .perInput, default: .number(1), help: "The input's weight w_i (≥ 0; normalised to sum 1)."),
            ParameterDeclaration("fisher_epsilon", .number, .shared, default: .number(1e-6), help: "ε, added to every Fisher value (≥ 0)."),
            ParameterDeclaration("fisher_normalize", .choice(FisherNormalize.allCases.map(\.rawValue)), .shared,
                                 default: .string("global"), help: "global: c_i = w_i / ‖F_i‖₂ over all merged tensors; none: c_i = w_i."),
        ],
        normalizesWeights: true)

    let context: MergeContext
    let fisher: [Checkpoint]
    /// `c_i / w_i` per input: `1 / ‖F_i‖₂` or 1.
    let scale: [Double]
    /// Where each merged tensor's Fisher values are, per source, by item number.
    let locations: [Int: [Int]]

    /// Checks every Fisher tensor the merge needs (present, same shape, finite, ≥ 0) and
    /// computes each model's global norm, streaming the Fisher files once.
    public init(_ context: MergeContext) throws {
        self.context = context
        let parameters = context.parameters
        let fisher = context.files["fisher"] ?? []
        self.fisher = fisher
        let items = context.plan.items.filter { $0.action == .merge }
        for item in items {
            _ = try context.normalizedWeights(item)
            let epsilon = try parameters.number("fisher_epsilon", tensor: item.name)
            guard epsilon >= 0 else { throw WSAMergeError.usage("fisher: fisher_epsilon must be ≥ 0 (got \(epsilon))") }
        }
        var sums = [Double](repeating: 0, count: fisher.count)
        // Every Fisher tensor the merge needs is there, shaped like the model's and decodable.
        var locations: [[(file: Checkpoint, index: Int)]] = []
        for item in items {
            locations.append(try item.sources.map { source in
                let f = fisher[source.input]
                guard let index = f.index(of: item.name) else {
                    throw WSAMergeError.malformed(file: f.path, tensor: item.name, reason: "Fisher tensor is missing")
                }
                let info = f.tensors[index]
                guard info.shape == item.output.shape else {
                    throw WSAMergeError.malformed(file: f.path, tensor: item.name,
                                                  reason: "Fisher shape \(info.shape) differs from the model's \(item.output.shape)")
                }
                guard info.dtype.isDecodable else {
                    throw WSAMergeError.malformed(file: f.path, tensor: item.name, reason: "Fisher dtype \(info.dtype.rawValue) cannot be decoded")
                }
                return (f, index)
            })
        }
        // One lockstep pass over each tensor's Fisher values of every input; several tensors side
        // by side (unless a checkpoint cannot be read that way: `readsTensorsInParallel`).
        let toCheck = locations
        let checks = try parallelMap(sizes: items.map(\.output.byteCount), jobs: context.jobs,
                                     serial: fisher.contains { !$0.readsTensorsInParallel }) { k, jobs in
            try Self.check(toCheck[k].map { try $0.file.reader(for: $0.index) }, jobs: jobs)
        }
        // Validated and summed in tensor order, so the norms are the same for every `--jobs`.
        for (item, (sources, tensorChecks)) in zip(items, zip(locations, checks)) {
            for ((file, _), check) in zip(sources, tensorChecks) {
                guard !check.nonFinite else {
                    throw WSAMergeError.malformed(file: file.path, tensor: item.name, reason: "Fisher values must be finite")
                }
                guard check.minimum >= 0 else {
                    throw WSAMergeError.malformed(file: file.path, tensor: item.name, reason: "Fisher values must be ≥ 0 (found \(check.minimum))")
                }
            }
            for (source, check) in zip(item.sources, tensorChecks) { sums[source.input] += check.squares }
        }
        let global = try items.first.map { try parameters.string("fisher_normalize", tensor: $0.name) == FisherNormalize.global.rawValue } ?? true
        scale = sums.map { global && $0 > 0 ? 1 / $0.squareRoot() : 1 }
        self.locations = Dictionary(uniqueKeysWithValues: zip(items.map(\.number), locations.map { $0.map(\.index) }))
    }

    /// Σ F², the minimum and finiteness of each reader's Fisher values, in one lockstep pass.
    private static func check(_ readers: [TensorReader], jobs: Int) throws -> [FisherCheck] {
        var checks = [FisherCheck](repeating: FisherCheck(), count: readers.count)
        let raw = Lockstep.perInput(readers) { FisherCheck(elements: $0, kind: $1, count: $2) }
        try Lockstep.run(readers, jobs: jobs, output: nil, raw: raw, kernel: { inputs, count, _ in
            inputs.map { FisherCheck(values: $0, count: count) }
        }, fold: { blocks in
            for block in blocks { for k in block.indices { checks[k].combine(block[k]) } }
        })
        return checks
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        var readers = try context.readers(item)
        for (source, index) in zip(item.sources, locations[item.number] ?? []) {
            readers.append(try fisher[source.input].reader(for: index))
        }
        let weights = try context.normalizedWeights(item)
        let c = zip(item.sources, weights).map { source, w in w * scale[source.input] }
        let n = item.sources.count
        let epsilon = try context.parameters.number("fisher_epsilon", tensor: item.name)
        let jobs = context.jobs
        var nonFinite = false
        let fused = FusedCombine(.fisher(c: c, epsilon: epsilon), inputs: readers.map(\.tensor.dtype), output: output.dtype)
        try Lockstep.run(readers, jobs: jobs, output: output, raw: fused?.kernel(false), kernel: { inputs, count, out in
            // out ← Σ a_k x_k and den ← Σ a_k with a_k = c_k (F_k + ε), summed in input order.
            withUnsafeTemporaryAllocation(of: Double.self, capacity: count) { den in
                for k in 0..<n {
                    wsk_fisher_accumulate(out, den.baseAddress!, inputs[k], inputs[n + k], c[k], epsilon, count, k == 0 ? 1 : 0)
                }
                if wsk_fisher_divide(out, den.baseAddress!, count) > 0 {
                    // ε = 0 and no Fisher information here: fall back to the weighted average.
                    for j in 0..<count where !(den[j] > 0) {
                        var y = 0.0
                        for k in 0..<n { y += weights[k] * inputs[k][j] }
                        out[j] = y
                    }
                }
            }
            return containsNonFinite(out, count)
        }, fold: { flags in if flags.contains(true) { nonFinite = true } })
        return TensorMergeResult(method: "fisher", nonFinite: nonFinite)
    }
}

/// What the Fisher check pass needs of a block: Σ F², the minimum, and whether any value is NaN
/// or infinite. Folded in block order, so the norm is the same for every `--jobs`.
struct FisherCheck: Sendable {
    var squares = 0.0
    var minimum = Double.infinity
    var nonFinite = false

    init() {}

    init(values: UnsafePointer<Double>, count: Int) {
        wsk_squares_min(values, Int32(WSK_F64), count, &squares, &minimum)
        nonFinite = containsNonFinite(values, count)
    }

    /// The same from stored elements without the minimum, or nil when Σ F² is not finite (some
    /// value may be NaN or infinite) or a sign bit is set (some value may be negative): only the
    /// decoded values tell those apart. Otherwise every value is ≥ 0, which is all the check
    /// needs of the minimum, so it is left at +∞.
    init?(elements: UnsafeRawPointer, kind: Int32, count: Int) {
        var signs: Int32 = 0
        wsk_squares_signs(elements, kind, count, &squares, &signs)
        guard squares.isFinite, signs == 0 else { return nil }
    }

    mutating func combine(_ other: FisherCheck) {
        squares += other.squares
        minimum = Swift.min(minimum, other.minimum)
        nonFinite = nonFinite || other.nonFinite
    }
}
