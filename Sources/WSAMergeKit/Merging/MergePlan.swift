#if canImport(Glibc)
import Glibc
#endif

/// What to do with missing tensors: refuse (default), merge only the common ones, or merge
/// each tensor over the inputs that have it.
public enum OnMissing: String, CaseIterable, Sendable { case error, intersection, union }

/// Everything `fuse` will do, decided and checked before the first byte is written: which
/// tensors are merged or copied, from which inputs, into which dtype.
public struct MergePlan {
    public struct Item {
        public enum Action: Equatable {
            case merge
            /// Copied byte for byte from the first input that has it.
            case copy(reason: String)
        }

        public let name: String
        /// Output name, dtype and shape.
        public let output: TensorInfo
        /// `(input number, tensor index in that input)` for every input holding the tensor.
        public let sources: [(input: Int, index: Int)]
        /// The sources' weights, renormalised to sum 1.
        public let weights: [Double]
        public let action: Action
    }

    public let inputs: [Checkpoint]
    public let weights: [Double]
    public let items: [Item]

    /// Opens readers of every source of `item`.
    func readers(_ item: Item) throws -> [TensorReader] {
        try item.sources.map { try inputs[$0.input].reader(for: $0.index) }
    }

    /// Checks the inputs against each other and decides every tensor's fate.
    ///
    /// - Parameters:
    ///   - outputDType: `nil` keeps each tensor's dtype from the first input.
    ///   - filter: unselected tensors are copied from the first input.
    public init(inputs: [Checkpoint], weights: [Double], filter: TensorFilter, onMissing: OnMissing,
                outputDType: DType?) throws {
        guard inputs.count >= 1 else { throw WSAMergeError.usage("fuse needs at least one input") }
        self.inputs = inputs
        self.weights = weights
        // Names: first input's storage order, then names only later inputs have.
        var names: [String] = []
        var seen = Set<ByteKey>()  // names compare byte-wise (NFC and NFD spellings differ)
        for checkpoint in inputs {
            for tensor in checkpoint.tensors where seen.insert(ByteKey(tensor.name)).inserted { names.append(tensor.name) }
        }
        var missingReports: [String] = []
        var items: [Item] = []
        for name in names {
            var sources: [(input: Int, index: Int)] = []
            for (k, checkpoint) in inputs.enumerated() {
                if let i = checkpoint.index(of: name) { sources.append((k, i)) }
            }
            if sources.count < inputs.count {
                switch onMissing {
                case .error:
                    let lacking = inputs.indices.filter { k in !sources.contains { $0.input == k } }.map { inputs[$0].path }
                    missingReports.append("'\(name)' is missing from \(lacking.joined(separator: ", "))")
                    continue
                case .intersection:
                    continue
                case .union:
                    break
                }
            }
            items.append(try Self.plan(name, sources: sources, inputs: inputs, weights: weights, filter: filter,
                                       outputDType: outputDType))
        }
        if !missingReports.isEmpty {
            let shown = missingReports.prefix(5).joined(separator: "; ")
            let more = missingReports.count > 5 ? " (and \(missingReports.count - 5) more)" : ""
            throw WSAMergeError.malformed(file: inputs[0].path,
                                          reason: "tensor sets differ: \(shown)\(more); pass --on-missing intersection or union to merge anyway")
        }
        guard !items.isEmpty else { throw WSAMergeError.malformed(file: inputs[0].path, reason: "no tensor to write") }
        self.items = items
    }

    private static func plan(_ name: String, sources: [(input: Int, index: Int)], inputs: [Checkpoint], weights: [Double],
                             filter: TensorFilter, outputDType: DType?) throws -> Item {
        let infos = sources.map { inputs[$0.input].tensors[$0.index] }
        let first = infos[0]
        for (source, info) in zip(sources, infos) where info.shape != first.shape {
            throw WSAMergeError.malformed(file: inputs[source.input].path, tensor: name,
                                          reason: "shape \(info.shape) differs from \(first.shape) in \(inputs[sources[0].input].path)")
        }
        let sub = sources.map { weights[$0.input] }
        let total = sub.reduce(0, +)
        let itemWeights = total > 0 ? sub.map { $0 / total } : [Double](repeating: 1 / Double(sub.count), count: sub.count)
        func copy(_ reason: String) -> Item {
            Item(name: name, output: first, sources: sources, weights: itemWeights, action: .copy(reason: reason))
        }
        if !filter.selects(name) { return copy("excluded by --include/--exclude") }
        let allFloat = infos.allSatisfy { $0.dtype.isFloat && $0.dtype.isDecodable }
        // A tensor only one input holds (`--on-missing union`, or a single input): float ones
        // still go through the strategy, so `--dtype` applies; the others are copied.
        if sources.count == 1 && !allFloat { return copy("only in \(inputs[sources[0].input].path)") }
        if !allFloat {
            if infos.contains(where: { $0.dtype.isFloat && $0.dtype.isDecodable }) && infos.contains(where: { !$0.dtype.isFloat }) {
                throw WSAMergeError.malformed(file: inputs[sources[0].input].path, tensor: name,
                                              reason: "dtypes differ between inputs (\(infos.map(\.dtype.rawValue).joined(separator: ", "))): cannot merge an integer tensor with a float one")
            }
            try requireIdentical(name, sources: sources, inputs: inputs)
            let kind = first.dtype.isFloat || first.dtype == .C64 ? "not decodable (\(first.dtype.rawValue))" : "integer/bool"
            return copy("\(kind), identical in every input")
        }
        let dtype = outputDType ?? first.dtype
        guard dtype.isEncodable else {
            throw WSAMergeError.malformed(file: inputs[sources[0].input].path, tensor: name,
                                          reason: "cannot write merged values as \(dtype.rawValue); pass --dtype F64, F32, F16 or BF16")
        }
        let output = try TensorInfo(name: name, dtype: dtype, shape: first.shape, file: inputs[sources[0].input].path)
        return Item(name: name, output: output, sources: sources, weights: itemWeights, action: .merge)
    }

    /// Refuses tensors that cannot be merged unless every input holds the same bytes.
    private static func requireIdentical(_ name: String, sources: [(input: Int, index: Int)], inputs: [Checkpoint]) throws {
        let infos = sources.map { inputs[$0.input].tensors[$0.index] }
        let differ = WSAMergeError.malformed(file: inputs[sources[0].input].path, tensor: name,
                                             reason: "\(infos[0].dtype.rawValue) tensors cannot be merged and differ between inputs")
        guard infos.allSatisfy({ $0.dtype == infos[0].dtype }) else { throw differ }
        let readers = try sources.map { try inputs[$0.input].reader(for: $0.index) }
        let chunk = 1 << 20
        let buffers = readers.map { _ in RawBuffer(byteCount: chunk) }
        while readers[0].remaining > 0 {
            let n = Swift.min(chunk, readers[0].remaining)
            for (reader, buffer) in zip(readers, buffers) { try reader.read(into: buffer.prefix(n)) }
            for buffer in buffers.dropFirst() where memcmp(buffer.base, buffers[0].base, n) != 0 {
                throw differ
            }
        }
    }
}
