import CKernels

/// The fast path of a writing pass: `wsk_combine` reads BF16/F16/F32/F64 inputs straight from the
/// chunk, combines them in float64 and writes BF16/F16/F32/F64 output, skipping the decoded float64
/// blocks. It performs the float64 operations of the decoded kernel it stands for, in the same
/// order, so the output bytes are the same either way; a block it cannot finish (a non-finite
/// result, a BF16 subnormal, an F16 overflow, an empty Fisher denominator) is redone by the
/// decoded kernel.
struct FusedCombine: Sendable {
    /// What is combined, per input `k`.
    enum Method {
        /// `Σ w_k x_k / divisor`.
        case average(weights: [Double], divisor: Double)
        /// `Σ (x_k − mean_k) c_k + target`.
        case rescale(c: [Double], means: [Double], target: Double)
        /// `Σ a_k x_k / Σ a_k` with `a_k = c_k (F_k + ε)`; the Fisher values are the inputs after
        /// the models (input `n + k` for model `k`).
        case fisher(c: [Double], epsilon: Double)
    }

    private let mode: Int32
    /// Per input term: stored kind, weight, mean (rescale) and the Fisher input's kind.
    private let kinds: [Int32]
    private let weights: [Double]
    private let means: [Double]
    private let fisherKinds: [Int32]
    private let target: Double
    private let epsilon: Double
    private let outputKind: Int32

    /// The fused kernel for these input and output dtypes, or nil when one is not BF16, F16, F32 or F64.
    init?(_ method: Method, inputs: [DType], output: DType) {
        guard let outputKind = output.rawKind else { return nil }
        let kinds = inputs.map(\.rawKind)
        guard !kinds.contains(nil) else { return nil }
        self.outputKind = outputKind
        switch method {
        case .average(let weights, let divisor):
            mode = Int32(WSK_AVERAGE)
            self.weights = weights
            means = [Double](repeating: 0, count: weights.count)
            fisherKinds = []
            (target, epsilon) = (divisor, 0)
        case .rescale(let c, let means, let target):
            mode = Int32(WSK_RESCALE)
            weights = c
            self.means = means
            fisherKinds = []
            (self.target, epsilon) = (target, 0)
        case .fisher(let c, let epsilon):
            mode = Int32(WSK_FISHER)
            weights = c
            means = [Double](repeating: 0, count: c.count)
            fisherKinds = c.indices.map { kinds[c.count + $0]! }
            (target, self.epsilon) = (0, epsilon)
        }
        self.kinds = weights.indices.map { kinds[$0]! }
    }

    /// The raw kernel of a writing pass whose finished blocks report `result`.
    func kernel<T: Sendable>(_ result: T) -> Lockstep.RawKernel<T> {
        { inputs, count, output in run(inputs, count: count, into: output!) ? result : nil }
    }

    /// Combines `count` elements; `inputs[k]` points at input `k`'s first element. Returns false
    /// when the block must be redone by the decoded kernel.
    func run(_ inputs: [UnsafeRawPointer], count: Int, into output: UnsafeMutableRawPointer) -> Bool {
        let n = kinds.count
        let fisher = !fisherKinds.isEmpty
        return withUnsafeTemporaryAllocation(of: wsk_term.self, capacity: n) { block in
            for k in 0..<n {
                block[k] = wsk_term(x: inputs[k], fisher: fisher ? inputs[n + k] : nil, kind: kinds[k],
                                    fisher_kind: fisher ? fisherKinds[k] : 0, weight: weights[k], mean: means[k])
            }
            return wsk_combine(block.baseAddress!, n, mode, target, epsilon, count, outputKind, output) == 0
        }
    }
}
