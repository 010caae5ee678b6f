import CKernels
import Foundation

/// How a tensor is cut into the vectors a geometric method works on.
enum VectorLayout: Sendable, Equatable {
    /// The whole tensor is one vector.
    case whole
    /// Rows along the last axis (contiguous), each `length` long.
    case rows(length: Int)
    /// Vectors along axis 0: element j belongs to vector `j mod stride`.
    case axis0(stride: Int)

    /// `layout` for a tensor of `shape`: rows along the last axis, or along axis 0.
    static func along(lastAxis: Bool, shape: [Int]) -> VectorLayout {
        guard shape.count >= 2 else { return .whole }
        return lastAxis ? .rows(length: shape.last!) : .axis0(stride: shape.dropFirst().reduce(1, *))
    }

    func count(elements: Int) -> Int {
        switch self {
        case .whole: 1
        case .rows(let length): length == 0 ? 0 : elements / length
        case .axis0(let stride): stride
        }
    }

    @inline(__always)
    func vector(of j: Int) -> Int {
        switch self {
        case .whole: 0
        case .rows(let length): j / length
        case .axis0(let stride): j % stride
        }
    }
}

/// Inner products of a few vectors derived from the inputs, per vector of a layout, in one
/// streamed pass: `sums[v][p] = Σ_j a_p(j)·b_p(j)` over the elements j of vector v, for every
/// pair p = (a, b) of the derived vectors. Each run of a vector's elements within a block is
/// summed by `wsk_dot` (8 lanes); block sums are folded in block order, so the result does not
/// depend on `--jobs`.
///
/// - Parameters:
///   - derive: fills `derived[k]` (count values each) from the decoded inputs of a block that
///     starts at C-order `position`.
func innerProducts(_ readers: [TensorReader], jobs: Int, layout: VectorLayout, derivedCount: Int, pairs: [(Int, Int)],
                   derive: @escaping @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int,
                                                _ derived: [UnsafeMutablePointer<Double>], _ position: Int) -> Void) throws -> [[Double]] {
    let elements = readers[0].tensor.elementCount
    let vectors = layout.count(elements: elements)
    var sums = [[Double]](repeating: [Double](repeating: 0, count: pairs.count), count: vectors)
    guard elements > 0 else { return sums }
    struct Partial: Sendable { var first: Int; var sums: [[Double]] }
    try Lockstep.run(readers, jobs: jobs, output: nil, positioned: { inputs, count, _, position in
        let derived = (0..<derivedCount).map { _ in UnsafeMutablePointer<Double>.allocate(capacity: count) }
        defer { derived.forEach { $0.deallocate() } }
        derive(inputs, count, derived, position)
        // The vectors a block touches: a run of them (modulo the vector count for axis 0).
        let first: Int, touched: Int
        switch layout {
        case .whole: (first, touched) = (0, 1)
        case .rows(let length): (first, touched) = (position / length, (position + count - 1) / length - position / length + 1)
        case .axis0(let stride): (first, touched) = count >= stride ? (0, stride) : (position % stride, count)
        }
        // Flat partial sums: vector v's pair p at v·P + p; the vector index advances with j
        // instead of being recomputed.
        let P = pairs.count
        var flat = [Double](repeating: 0, count: touched * P)
        flat.withUnsafeMutableBufferPointer { sums in
            derived.withUnsafeBufferPointer { derived in
                var j = 0
                while j < count {
                    // The run of elements of one vector starting at j, and that vector's slot.
                    let v = (layout.vector(of: position + j) - first + vectors) % vectors
                    var end = j + 1
                    switch layout {
                    case .whole: end = count
                    case .rows(let length): end = Swift.min(count, ((position + j) / length + 1) * length - position)
                    case .axis0: end = j + 1
                    }
                    let slot = sums.baseAddress! + v * P
                    for (p, (a, b)) in pairs.enumerated() { slot[p] += wsk_dot(derived[a] + j, derived[b] + j, end - j) }
                    j = end
                }
            }
        }
        let local = (0..<touched).map { Array(flat[($0 * P)..<(($0 + 1) * P)]) }
        return Partial(first: first, sums: local)
    }, fold: { blocks in
        for block in blocks {
            for (offset, partial) in block.sums.enumerated() {
                let v = (block.first + offset) % vectors
                for p in partial.indices { sums[v][p] += partial[p] }
            }
        }
    })
    return sums
}

/// `pairs` of `0..<n` with `i ≤ j`, in order, and the index of each in that list.
func upperPairs(_ n: Int) -> (pairs: [(Int, Int)], index: (Int, Int) -> Int) {
    var pairs: [(Int, Int)] = []
    for i in 0..<n { for j in i..<n { pairs.append((i, j)) } }
    let n0 = n
    return (pairs, { i, j in
        let (a, b) = i <= j ? (i, j) : (j, i)
        return a * n0 - a * (a - 1) / 2 + (b - a)
    })
}

/// The task vectors `x_k − b` (or the inputs themselves without a base) of a block.
@Sendable func taskVectors(_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ derived: [UnsafeMutablePointer<Double>],
                           hasBase: Bool) {
    let n = derived.count
    for k in 0..<n {
        for j in 0..<count { derived[k][j] = hasBase ? inputs[k][j] - inputs[n][j] : inputs[k][j] }
    }
}

// MARK: - slerp

/// Spherical interpolation between the base (t = 0) and one other model (t = 1), over the
/// whole tensor as one vector:
/// ```
/// dot = clamp(⟨a/‖a‖, c/‖c‖⟩, −1, 1)        (a norm ≤ 1e-8 is taken as 1)
/// |dot| > 0.9995:  out = (1−t) a + t c
/// else:            θ = acos dot,  out = sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · c
/// ```
public struct SlerpStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "slerp", summary: "Spherical interpolation from the base (t = 0) to the other model (t = 1).",
        base: .required, inputs: 1...1,
        parameters: [ParameterDeclaration("t", .number, .shared, default: nil, help: "Interpolation factor (not range-checked: outside [0, 1] extrapolates).")])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let t = try context.parameters.number("t", tensor: item.name)
        let base = { try self.context.baseReader(item) }
        let sums = try innerProducts([try base(), try context.readers(item)[0]], jobs: context.jobs, layout: .whole, derivedCount: 2,
                                     pairs: [(0, 0), (0, 1), (1, 1)]) { inputs, count, derived, _ in
            for k in 0..<2 { derived[k].update(from: inputs[k], count: count) }
        }[0]
        var na = sums[0].squareRoot(), nc = sums[2].squareRoot()
        if na <= 1e-8 { na = 1 }
        if nc <= 1e-8 { nc = 1 }
        let dot = Swift.min(Swift.max(sums[1] / (na * nc), -1), 1)
        let linear = Swift.abs(dot) > 0.9995
        let (s0, s1): (Double, Double)
        if linear {
            (s0, s1) = (1 - t, t)
        } else {
            let theta = acos(dot), st = sin(theta)
            (s0, s1) = (sin((1 - t) * theta) / st, sin(t * theta) / st)
        }
        let nonFinite = try elementwisePass([try base(), try context.readers(item)[0]], jobs: context.jobs, output: output) { inputs, count, out, _ in
            for j in 0..<count { out[j] = s0 * inputs[0][j] + s1 * inputs[1][j] }
        }
        return TensorMergeResult(method: linear ? "slerp (linear: |dot| > 0.9995)" : "slerp", nonFinite: nonFinite,
                                 details: [("t", .double(t)), ("dot", .double(dot))])
    }
}

// MARK: - nearswap

/// Interpolates each element toward the other model where the two are close:
/// `ω = clamp(t / max(|b − c|, 1e-6), 0, 1)`, `out = ω c + (1 − ω) b`.
public struct NearSwapStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "nearswap", summary: "Take the other model's value where it is within t of the base's: ω = clamp(t/|b − c|, 0, 1).",
        base: .required, inputs: 1...1,
        parameters: [ParameterDeclaration("t", .number, .shared, default: nil, help: "Distance scale of the swap.")])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let t = try context.parameters.number("t", tensor: item.name)
        let nonFinite = try elementwisePass([try context.baseReader(item), try context.readers(item)[0]], jobs: context.jobs, output: output) { inputs, count, out, _ in
            for j in 0..<count {
                let b = inputs[0][j], c = inputs[1][j]
                let omega = Swift.min(Swift.max(t / Swift.max(Swift.abs(b - c), 1e-6), 0), 1)
                out[j] = omega * c + (1 - omega) * b
            }
        }
        return TensorMergeResult(method: "nearswap", nonFinite: nonFinite)
    }
}

// MARK: - nuslerp

/// NuSLERP: spherical interpolation of exactly two inputs (their task vectors against a base,
/// when given) with `t = w_1/(w_0 + w_1)` (0.5 when |w_0 + w_1| < 1e-6), over the whole tensor
/// (`nuslerp_flatten`), rows along the last axis, or vectors along axis 0 (`nuslerp_row_wise`):
/// ```
/// u = v/max(‖v‖, 1e-7),  cos = clamp(⟨u_0, u_1⟩, −1, 1)
/// 1 − cos² ≤ 1e-16:  (1−t) v_0 + t v_1;   else θ = acos cos:  (sin((1−t)θ) v_0 + sin(tθ) v_1) / sin θ
/// ```
/// **wsamerge:** where |cos| is within 1e-6 of 1, `1 − cos²` is computed as `sin²θ` from the
/// residual of a projection (`nearlyColinearSines`) and `θ = atan2(sin θ, cos)`, so exactly
/// parallel or opposite vectors take the linear branch.
public struct NuSlerpStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "nuslerp", summary: "Spherical interpolation of two models (or their task vectors), whole or row by row.",
        base: .optional, inputs: 2...2,
        parameters: [
            ParameterDeclaration("weight", .number, .perInput, default: nil, help: "The input's weight; t = w_1/(w_0 + w_1)."),
            ParameterDeclaration("nuslerp_flatten", .bool, .shared, default: .bool(true), help: "Treat the whole tensor as one vector."),
            ParameterDeclaration("nuslerp_row_wise", .bool, .shared, default: .bool(false),
                                 help: "Without flatten: vectors along axis 0 instead of rows along the last axis."),
        ])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let p = context.parameters
        let w = try p.numbers("weight", tensor: item.name)
        let sum = w[0] + w[1]
        let t = Swift.abs(sum) < 1e-6 ? 0.5 : w[1] / sum
        let layout: VectorLayout = try p.bool("nuslerp_flatten", tensor: item.name)
            ? .whole : .along(lastAxis: !(try p.bool("nuslerp_row_wise", tensor: item.name)), shape: item.output.shape)
        let hasBase = item.base != nil
        let readers = { try self.context.readers(item) + (hasBase ? [try self.context.baseReader(item)] : []) }
        let sums = try innerProducts(try readers(), jobs: context.jobs, layout: layout, derivedCount: 2, pairs: [(0, 0), (0, 1), (1, 1)]) {
            inputs, count, derived, _ in taskVectors(inputs, count, derived, hasBase: hasBase)
        }
        let cosines = sums.map { s in
            Swift.min(Swift.max(s[1] / (Swift.max(s[0].squareRoot(), 1e-7) * Swift.max(s[2].squareRoot(), 1e-7)), -1), 1)
        }
        let sines = try Self.nearlyColinearSines(sums, cosines: cosines, readers: readers, layout: layout, hasBase: hasBase, jobs: context.jobs)
        // Per vector: (s0, s1, divisor): out = (s0 v0 + s1 v1) / divisor.
        var linearCount = 0
        let coefficients: [(Double, Double, Double)] = cosines.indices.map { v in
            let cos = cosines[v], sin2 = sines[v] ?? 1 - cos * cos
            if sin2 <= 1e-16 {
                linearCount += 1
                return (1 - t, t, 1)
            }
            let theta = sines[v] == nil ? acos(cos) : atan2(sin2.squareRoot(), cos)
            return (sin((1 - t) * theta), sin(t * theta), sin(theta))
        }
        let nonFinite = try elementwisePass(try readers(), jobs: context.jobs, output: output) { inputs, count, out, position in
            for j in 0..<count {
                let b = hasBase ? inputs[2][j] : 0
                let v0 = inputs[0][j] - b, v1 = inputs[1][j] - b
                let (s0, s1, d) = coefficients[layout.vector(of: position + j)]
                let y = d == 1 && s0 == 1 - t ? s0 * v0 + s1 * v1 : (s0 * v0 + s1 * v1) / d
                out[j] = hasBase ? b + y : y
            }
        }
        return TensorMergeResult(method: "nuslerp", nonFinite: nonFinite,
                                 details: [("t", .double(t)), ("linear_vectors", .int(linearCount)), ("vectors", .int(sums.count))])
    }

    /// `sin²θ` of the vectors whose cosine is within 1e-6 of ±1 (nil for the others), from the
    /// residual of projecting v_0 on v_1 in one more pass (only when there is such a vector):
    /// `sin²θ = ‖v_0 − (⟨v_0,v_1⟩/‖v_1‖²) v_1‖² / ‖v_0‖²`. `1 − cos²` from the float64 cosine is
    /// rounding noise there (exactly opposite vectors gave 4e-16 and missed the linear branch);
    /// the residual's error enters squared.
    static func nearlyColinearSines(_ sums: [[Double]], cosines: [Double], readers: () throws -> [TensorReader], layout: VectorLayout,
                                    hasBase: Bool, jobs: Int) throws -> [Double?] {
        let flagged = sums.indices.map { v in
            sums[v][0].squareRoot() >= 1e-7 && sums[v][2].squareRoot() >= 1e-7 && 1 - Swift.abs(cosines[v]) <= 1e-6
        }
        guard flagged.contains(true) else { return sums.map { _ in nil } }
        let factors = sums.indices.map { flagged[$0] ? sums[$0][1] / sums[$0][2] : 0 }
        let residuals = try innerProducts(try readers(), jobs: jobs, layout: layout, derivedCount: 1, pairs: [(0, 0)]) { inputs, count, derived, position in
            for j in 0..<count {
                let b = hasBase ? inputs[2][j] : 0
                derived[0][j] = (inputs[0][j] - b) - factors[layout.vector(of: position + j)] * (inputs[1][j] - b)
            }
        }
        return sums.indices.map { flagged[$0] ? residuals[$0][0] / sums[$0][0] : nil }
    }
}

// MARK: - multislerp

/// A spherical weighted mean of one or more inputs (their task vectors against a base, when
/// given): `w ← w/Σw` (`normalize_weights`), `X_i` the vectors, `n_i = ‖X_i‖`,
/// `m = Σ w_i X_i/(n_i + eps)`, `out = (Σ w_i n_i)·m/‖m‖` (+ b); one input is returned unchanged.
/// **wsamerge:** when `‖m‖ < eps` (e.g. all task vectors zero) the result is `Σ w_i X_i` (+ b).
public struct MultiSlerpStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "multislerp", summary: "Spherical weighted mean of several models or task vectors.",
        base: .optional,
        parameters: [
            ParameterDeclaration("weight", .number, .perInput, default: nil, help: "The input's weight."),
            ParameterDeclaration("normalize_weights", .bool, .shared, default: .bool(true), help: "Divide the weights by their sum."),
            ParameterDeclaration("eps", .number, .shared, default: .number(1e-8), help: "Added to each norm; below it ‖m‖ counts as zero."),
        ])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let p = context.parameters, n = item.sources.count
        if n == 1 {
            let nonFinite = try weightedAverage(try context.readers(item), weights: [1], jobs: context.jobs, output: output)
            return TensorMergeResult(method: "multislerp (one input: unchanged)", nonFinite: nonFinite)
        }
        let given = try item.sources.map { try p.number("weight", input: $0.input, tensor: item.name) }
        var sum = 0.0
        for x in given { sum += x }
        let w = try p.bool("normalize_weights", tensor: item.name) ? given.map { $0 / sum } : given
        let eps = try p.number("eps", tensor: item.name)
        let hasBase = item.base != nil
        let readers = { try self.context.readers(item) + (hasBase ? [try self.context.baseReader(item)] : []) }
        let squares = try innerProducts(try readers(), jobs: context.jobs, layout: .whole, derivedCount: n,
                                        pairs: (0..<n).map { ($0, $0) }) { inputs, count, derived, _ in
            taskVectors(inputs, count, derived, hasBase: hasBase)
        }[0]
        let norms = squares.map { $0.squareRoot() }
        let coefficient = zip(w, norms).map { $0 / ($1 + eps) }
        // ‖m‖ from m itself, element by element.
        let m2 = try innerProducts(try readers(), jobs: context.jobs, layout: .whole, derivedCount: 1, pairs: [(0, 0)]) { inputs, count, derived, _ in
            for j in 0..<count {
                var m = 0.0
                for k in 0..<n { m = m + coefficient[k] * (hasBase ? inputs[k][j] - inputs[n][j] : inputs[k][j]) }
                derived[0][j] = m
            }
        }[0][0]
        let nm = m2.squareRoot()
        let zero = nm < eps
        var total = 0.0
        for (wi, ni) in zip(w, norms) { total = total + wi * ni }
        let scale = total
        let nonFinite = try elementwisePass(try readers(), jobs: context.jobs, output: output) { inputs, count, out, _ in
            for j in 0..<count {
                let b = hasBase ? inputs[n][j] : 0
                var y = 0.0
                if zero {
                    for k in 0..<n { y = y + w[k] * (inputs[k][j] - b) }
                } else {
                    var m = 0.0
                    for k in 0..<n { m = m + coefficient[k] * (inputs[k][j] - b) }
                    y = scale * (m / nm)
                }
                out[j] = hasBase ? b + y : y
            }
        }
        return TensorMergeResult(method: zero ? "multislerp (‖m‖ < eps: weighted sum)" : "multislerp", nonFinite: nonFinite, fallback: zero)
    }
}

// MARK: - karcher

/// The Riemannian (Karcher) mean on the sphere of all inputs (a base is an ordinary input),
/// uniform weights, `max_iter` iterations at most, tolerance `tol`; the result has the mean norm
/// `Σ α_i n_i`. The mean direction always lies in the span of the input directions, so it is
/// kept as coefficients over them and every inner product comes from one Gram pass.
public struct KarcherStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "karcher", summary: "Karcher (Riemannian) mean of the models' directions, scaled to their mean norm.",
        base: .input,
        parameters: [
            ParameterDeclaration("max_iter", .integer, .shared, default: .number(10), help: "Iterations at most."),
            ParameterDeclaration("tol", .number, .shared, default: .number(1e-5), help: "Convergence tolerance (absolute)."),
        ])

    let context: MergeContext

    public init(_ context: MergeContext) throws {
        self.context = context
        for item in context.plan.items where item.action == .merge {
            let maxIter = try context.parameters.integer("max_iter", tensor: item.name), tol = try context.parameters.number("tol", tensor: item.name)
            guard maxIter >= 0, tol >= 0 else {
                throw WSAMergeError.usage("karcher: max_iter and tol must be ≥ 0 (got \(maxIter) and \(tol), tensor '\(item.name)')")
            }
        }
    }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let p = context.parameters, n = item.sources.count
        let maxIter = try p.integer("max_iter", tensor: item.name), tol = try p.number("tol", tensor: item.name)
        let (pairs, pair) = upperPairs(n)
        let sums = try innerProducts(try context.readers(item), jobs: context.jobs, layout: .whole, derivedCount: n, pairs: pairs) {
            inputs, count, derived, _ in taskVectors(inputs, count, derived, hasBase: false)
        }[0]
        let norms = (0..<n).map { sums[pair($0, $0)].squareRoot() }
        let alpha = 1 / Double(n)
        var scale = 0.0
        for ni in norms { scale = scale + alpha * ni }
        let valid = (0..<n).filter { norms[$0] > tol }
        var mu = [Double](repeating: 0, count: n)  // coefficients over the unit directions u_i
        var iterations = 0, converged = false
        if !valid.isEmpty {
            // Gram matrix of the unit directions.
            func g(_ i: Int, _ j: Int) -> Double { sums[pair(i, j)] / (norms[i] * norms[j]) }
            func normOf(_ c: [Double]) -> Double {
                var s = 0.0
                for i in valid { for j in valid { s += c[i] * c[j] * g(i, j) } }
                return Swift.max(s, 0).squareRoot()
            }
            let ahat = 1 / Double(valid.count)
            for i in valid { mu[i] = ahat }
            let nmu = normOf(mu)
            if nmu < tol {
                mu = [Double](repeating: 0, count: n)
                mu[valid[0]] = 1
            } else {
                mu = mu.map { $0 / nmu }
            }
            for _ in 0..<Swift.max(0, maxIter) {
                var tangent = [Double](repeating: 0, count: n)
                for i in valid {
                    var d = 0.0
                    for k in valid { d += mu[k] * g(k, i) }
                    d = Swift.min(Swift.max(d, -1), 1)
                    let theta = acos(d)
                    if theta < tol { continue }
                    let f = ahat * (theta / sin(theta))
                    tangent[i] += f
                    for k in valid { tangent[k] -= f * d * mu[k] }
                }
                let nT = normOf(tangent)
                if nT < tol {
                    converged = true
                    break
                }
                iterations += 1
                mu = (0..<n).map { cos(nT) * mu[$0] + sin(nT) * (tangent[$0] / nT) }
                let nm = normOf(mu)
                mu = mu.map { $0 / nm }
            }
        }
        // out = scale · Σ μ_i x_i / n_i
        let c = (0..<n).map { valid.contains($0) ? scale * mu[$0] / norms[$0] : 0 }
        let nonFinite = try elementwisePass(try context.readers(item), jobs: context.jobs, output: output) { inputs, count, out, _ in
            for j in 0..<count {
                var y = 0.0
                for k in 0..<n where c[k] != 0 { y += c[k] * inputs[k][j] }
                out[j] = y
            }
        }
        return TensorMergeResult(method: "karcher", nonFinite: nonFinite,
                                 details: [("iterations", .int(iterations)), ("converged", .bool(converged)), ("valid", .int(valid.count))])
    }
}

// MARK: - model_stock

/// Model Stock: `c` = mean over pairs of the task vectors' cosine (each clamped to [−1, 1],
/// the norm product at least 1e-6), `t = n·c/(1 + (n−1)c)` (0 when `|1 + (n−1)c| < 1e-6`),
/// `out = t·mean_i(x_i) + (1 − t)·b`; over the whole tensor, or per row with `filter_wise`.
public struct ModelStockStrategy: MergeStrategy, TensorMerge {
    public static let declaration = StrategyDeclaration(
        identifier: "model_stock", summary: "Model Stock: interpolate between the base and the inputs' mean by their task vectors' agreement.",
        base: .required, inputs: 2...Int.max,
        parameters: [ParameterDeclaration("filter_wise", .bool, .shared, default: .bool(false), help: "One t per row (last axis) instead of per tensor.")])

    let context: MergeContext

    public init(_ context: MergeContext) throws { self.context = context }

    public func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let n = item.sources.count
        let filterWise = try context.parameters.bool("filter_wise", tensor: item.name)
        let layout: VectorLayout = filterWise && item.output.shape.count >= 1
            ? (item.output.shape.count == 1 ? .whole : .rows(length: item.output.shape.last!)) : .whole
        let (pairs, pair) = upperPairs(n)
        let readers = { try self.context.readers(item) + [try self.context.baseReader(item)] }
        let sums = try innerProducts(try readers(), jobs: context.jobs, layout: layout, derivedCount: n, pairs: pairs) {
            inputs, count, derived, _ in taskVectors(inputs, count, derived, hasBase: true)
        }
        var zeroRows = 0
        let ts: [Double] = sums.map { s in
            let norms = (0..<n).map { s[pair($0, $0)].squareRoot() }
            var c = 0.0, count = 0
            for i in 0..<n {
                for j in (i + 1)..<n where j < n {
                    c = c + Swift.min(Swift.max(s[pair(i, j)] / Swift.max(norms[i] * norms[j], 1e-6), -1), 1)
                    count += 1
                }
            }
            c = c / Double(count)
            let den = 1 + Double(n - 1) * c
            if Swift.abs(den) < 1e-6 {
                zeroRows += 1
                return 0
            }
            return Double(n) * c / den
        }
        let nonFinite = try elementwisePass(try readers(), jobs: context.jobs, output: output) { inputs, count, out, position in
            for j in 0..<count {
                var mean = 0.0
                for k in 0..<n { mean = mean + inputs[k][j] }
                mean = mean / Double(n)
                let t = ts[layout.vector(of: position + j)]
                out[j] = t * mean + (1 - t) * inputs[n][j]
            }
        }
        var details: [(String, JSON)] = [("zero_denominator_rows", .int(zeroRows))]
        if ts.count == 1 { details.insert(("t", .double(ts[0])), at: 0) }
        return TensorMergeResult(method: "model_stock", nonFinite: nonFinite, details: details)
    }
}
