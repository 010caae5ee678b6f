import CKernels

/// The fast path of a writing pass: `wsk_combine` reads BF16/F16/F32/F64 inputs straight from the
/// chunk, combines them in float64 and writes BF16/F16/F32/F64 output, skipping the decoded float64
/// blocks. It performs the float64 operations of the decoded kernel it stands for, in the same
/// order, so the output bytes are the same either way; a block it cannot finish (a non-finite
/// result, a BF16 subnormal, an F16 overflow, an empty Fisher denominator) is redone by the
/// decoded kernel.
struct FusedCombine {
    /// What is combined, per input `k`.
    enum Method {
        /// `Σ w_k x_k`.
        case average(weights: [Double])
        /// `Σ (x_k − mean_k) c_k + target`.
        case rescale(c: [Double], means: [Double], target: Double)
        /// `Σ a_k x_k / Σ a_k` with `a_k = c_k (F_k + ε)`; the Fisher values are the inputs after
        /// the models (input `n + k` for model `k`).
        case fisher(c: [Double], epsilon: Double)
    }

    private let mode: Int32
    private let terms: [wsk_term]
    private let target: Double
    private let epsilon: Double
    private let outputKind: Int32
    private let fisher: Bool

    /// The fused kernel for these input and output dtypes, or nil when one is not BF16, F16, F32 or F64.
    init?(_ method: Method, inputs: [DType], output: DType) {
        guard let outputKind = output.rawKind else { return nil }
        let kinds = inputs.map(\.rawKind)
        guard !kinds.contains(nil) else { return nil }
        func term(_ k: Int, weight: Double, mean: Double = 0, fisherKind: Int32 = 0) -> wsk_term {
            wsk_term(x: nil, fisher: nil, kind: kinds[k]!, fisher_kind: fisherKind, weight: weight, mean: mean)
        }
        self.outputKind = outputKind
        switch method {
        case .average(let weights):
            mode = Int32(WSK_AVERAGE)
            terms = weights.indices.map { term($0, weight: weights[$0]) }
            (target, epsilon, fisher) = (0, 0, false)
        case .rescale(let c, let means, let target):
            mode = Int32(WSK_RESCALE)
            terms = c.indices.map { term($0, weight: c[$0], mean: means[$0]) }
            (self.target, epsilon, fisher) = (target, 0, false)
        case .fisher(let c, let epsilon):
            mode = Int32(WSK_FISHER)
            terms = c.indices.map { term($0, weight: c[$0], fisherKind: kinds[c.count + $0]!) }
            (target, self.epsilon, fisher) = (0, epsilon, true)
        }
    }

    /// The raw kernel of a writing pass whose finished blocks report `result`.
    func kernel<T>(_ result: T) -> Lockstep.RawKernel<T> {
        { inputs, count, output in run(inputs, count: count, into: output!) ? result : nil }
    }

    /// Combines `count` elements; `inputs[k]` points at input `k`'s first element. Returns false
    /// when the block must be redone by the decoded kernel.
    func run(_ inputs: [UnsafeRawPointer], count: Int, into output: UnsafeMutableRawPointer) -> Bool {
        withUnsafeTemporaryAllocation(of: wsk_term.self, capacity: terms.count) { block in
            for k in terms.indices {
                block[k] = terms[k]
                block[k].x = inputs[k]
                if fisher { block[k].fisher = inputs[terms.count + k] }
            }
            return wsk_combine(block.baseAddress!, terms.count, mode, target, epsilon, count, outputKind, output) == 0
        }
    }
}
