import CKernels

/// Where the WSA rescale applies.
public enum WSARescale: String, CaseIterable, Sendable {
    /// `out = Σ w_i ((x_i − μ_i) σ_f/σ_i + μ_f)`: each input is moved to the fused scope first.
    case inputs
    /// `y = Σ w_i x_i`, `out = (y − μ_y) σ_f/σ_y + μ_f`: the average is moved to the fused scope.
    case output
    /// `inputs`, then `output` on the result.
    case both
}

/// WSA scope-fused rescale: wsamerge's own post-hoc merge, inspired by *Weight Scope
/// Alignment* (Xu et al., ECAI 2024). The paper aligns scopes *during training* with a
/// regulariser toward a target scope; this strategy instead moves each input (or their
/// average) to the fused scope `(μ_f, σ_f)` before or after averaging.
///
/// Per float tensor of rank ≥ `--wsa-min-rank`:
/// 1. input scopes `μ_i = mean(x_i)`, `σ_i = std(x_i)` (float64, population);
/// 2. fused scope by `--scope-fusion` (see `ScopeFusion`) or from `--target-scope FILE`;
/// 3. rescale by `--wsa-rescale` (see `WSARescale`).
/// Smaller tensors, and tensors with `σ_i = 0` in some input, are averaged.
public struct WSAStrategy: MergeStrategy {
    public static let identifier = "wsa"
    public static let summary = "WSA scope-fused rescale (inspired by Weight Scope Alignment, ECAI 2024): inputs are moved to a fused per-layer scope (mean, std), then averaged."
    public static let options: [StrategyOption] = [
        StrategyOption(name: "--scope-fusion", defaultValue: "linear", help: "linear: σ_f = Σ w_i σ_i; quadratic: σ_f = √Σ w_i σ_i²; mixture: σ_f² = Σ w_i (σ_i² + μ_i²) − μ_f²."),
        StrategyOption(name: "--target-scope", defaultValue: nil, help: "A scope document (wsamerge scope -o) whose fused scopes replace the computed ones."),
        StrategyOption(name: "--wsa-rescale", defaultValue: "inputs", help: "inputs: rescale each input, then average; output: rescale the average; both."),
        StrategyOption(name: "--wsa-min-rank", defaultValue: "2", help: "Tensors of lower rank (biases, norms) are averaged."),
    ]

    let fusion: ScopeFusion
    let rescale: WSARescale
    let minRank: Int
    let target: TargetScope?
    let targetPath: String?
    /// Input scope moments per tensor name, from `measure`.
    private var measured: [ByteKey: [ScopeMoments]] = [:]  // by name, byte-wise

    public init(_ settings: StrategySettings) throws {
        guard settings.wsaMinRank >= 0 else { throw WSAMergeError.usage("--wsa-min-rank must be ≥ 0") }
        fusion = settings.scopeFusion
        rescale = settings.wsaRescale
        minRank = settings.wsaMinRank
        targetPath = settings.targetScopePath
        target = try settings.targetScopePath.map { try TargetScope(path: $0) }
    }

    public var provenance: [(String, String)] {
        var result = [("scope_fusion", targetPath == nil ? fusion.rawValue : "target"), ("wsa_rescale", rescale.rawValue),
                      ("wsa_min_rank", String(minRank))]
        if let targetPath { result.append(("target_scope", baseName(of: targetPath))) }
        return result
    }

    /// Measures the input scopes of every tensor the strategy rescales: each tensor's inputs in
    /// one lockstep pass, several tensors side by side (unless a checkpoint cannot be read
    /// that way, see `readsTensorsInParallel`).
    public mutating func measure(_ plan: MergePlan, jobs: Int) throws {
        let items = plan.items.filter { $0.action == .merge && $0.output.shape.count >= minRank }
        let moments = try parallelMap(sizes: items.map(\.output.byteCount), jobs: jobs,
                                      serial: plan.inputs.contains { !$0.readsTensorsInParallel }) { k, jobs in
            try Self.scopes(try plan.readers(items[k]), jobs: jobs)
        }
        measured = Dictionary(uniqueKeysWithValues: zip(items.map { ByteKey($0.name) }, moments))
    }

    /// The scope moments of each reader's values, in one lockstep pass; stored elements are
    /// decoded while the first pass reads them.
    private static func scopes(_ readers: [TensorReader], jobs: Int) throws -> [ScopeMoments] {
        var moments = [ScopeMoments](repeating: ScopeMoments(), count: readers.count)
        let raw = Lockstep.perInput(readers) { elements, kind, count in
            withUnsafeTemporaryAllocation(of: Double.self, capacity: count) { scratch in
                ScopeMoments(elements: elements, kind: kind, count: count, scratch: scratch.baseAddress!)
            }
        }
        try Lockstep.run(readers, jobs: jobs, output: nil, raw: raw, kernel: { inputs, count, _ in
            inputs.map { ScopeMoments(values: $0, count: count) }
        }, fold: { blocks in
            for block in blocks { for k in block.indices { moments[k].combine(block[k]) } }
        })
        return moments
    }

    public func merge(_ item: MergePlan.Item, plan: MergePlan, jobs: Int, output: Lockstep.Output) throws -> TensorMergeResult {
        let weights = item.weights
        guard item.output.shape.count >= minRank else {
            let nonFinite = try weightedAverage(try plan.readers(item), weights: weights, jobs: jobs, output: output)
            return TensorMergeResult(method: "average (rank \(item.output.shape.count) < \(minRank))", nonFinite: nonFinite)
        }
        // 1. Input scopes (see `measure`).
        let moments = measured[ByteKey(item.name)]!
        let nonFinite = moments.contains { $0.nan + $0.inf > 0 }
        let scopes = moments.map(\.scope)
        if scopes.contains(where: { !($0.std > 0) }) {
            _ = try weightedAverage(try plan.readers(item), weights: weights, jobs: jobs, output: output)
            return TensorMergeResult(method: "average (zero std in an input)", nonFinite: nonFinite, fallback: true)
        }
        // 2. Fused scope.
        var method = "wsa-rescale-\(rescale.rawValue)"
        var fallback = false
        let fused: Scope
        if let target {
            if let scope = target.scopes[item.name] {
                fused = scope
                method += " (target scope)"
            } else {
                fused = fusion.fuse(scopes, weights: weights)
                method += " (not in target scope: \(fusion.rawValue) fusion)"
                fallback = true
            }
        } else {
            fused = fusion.fuse(scopes, weights: weights)
        }
        // 3. Rescale.
        let scale = scopes.map { fused.std / $0.std }
        // Σ w_k ((x_k − μ_k) σ_f/σ_k + μ_f), evaluated as Σ (x_k − μ_k) c_k + μ_f Σ w_k with
        // c_k = w_k σ_f/σ_k: the deviations keep their precision, and each input costs one
        // subtraction, one product and one sum per element.
        let c = zip(weights, scale).map { $0 * $1 }
        let shift = fused.mean * weights.reduce(0, +)
        let rescaleInputs: Lockstep.Kernel<Void> = { inputs, count, out in
            for k in 0..<inputs.count {
                let values = inputs[k], mu = scopes[k].mean, ck = c[k]
                if k == 0 {
                    for j in 0..<count { out[j] = (values[j] - mu) * ck }
                } else {
                    for j in 0..<count { out[j] += (values[j] - mu) * ck }
                }
            }
            for j in 0..<count { out[j] += shift }
        }
        let average: Lockstep.Kernel<Void> = { inputs, count, out in
            wsk_scale(out, inputs[0], weights[0], count)
            for k in 1..<inputs.count { wsk_axpy(out, inputs[k], weights[k], count) }
        }
        if rescale == .inputs {
            let readers = try plan.readers(item)
            let combine = FusedCombine(.rescale(c: c, means: scopes.map(\.mean), target: shift),
                                       inputs: readers.map(\.tensor.dtype), output: output.dtype)
            try Lockstep.run(readers, jobs: jobs, output: output, raw: combine?.kernel(()), kernel: rescaleInputs, fold: { _ in })
            return TensorMergeResult(method: method, fused: fused, nonFinite: nonFinite, fallback: fallback)
        }
        // `output` / `both`: measure the combined tensor, then rescale it in a second pass.
        let combine = rescale == .output ? average : rescaleInputs
        var combined = Moments()
        try Lockstep.run(try plan.readers(item), jobs: jobs, output: nil, kernel: { inputs, count, out -> Moments in
            combine(inputs, count, out)
            return Moments(values: out, count: count)
        }, fold: { blocks in for m in blocks { combined.combine(m) } })
        guard let sigma = combined.std, sigma > 0, let mu = combined.finiteMean else {
            try Lockstep.run(try plan.readers(item), jobs: jobs, output: output, kernel: combine, fold: { _ in })
            return TensorMergeResult(method: method + " (zero std after combining: not rescaled)", fused: fused, nonFinite: nonFinite,
                                     fallback: true)
        }
        let a = fused.std / sigma
        try Lockstep.run(try plan.readers(item), jobs: jobs, output: output, kernel: { inputs, count, out in
            combine(inputs, count, out)
            for j in 0..<count { out[j] = (out[j] - mu) * a + fused.mean }
        }, fold: { _ in })
        return TensorMergeResult(method: method, fused: fused, nonFinite: nonFinite, fallback: fallback)
    }
}
