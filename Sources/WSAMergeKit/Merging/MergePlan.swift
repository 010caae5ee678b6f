
/// What to do with missing tensors: refuse (default), merge only the common ones, or merge
/// each tensor over the inputs that have it.
public enum OnMissing: String, CaseIterable, Sendable { case error, intersection, union }

/// The tensors an input lacks by design, which the plan merges over the inputs that hold them
/// whatever `OnMissing` says: the layers (output numbering) of a recipe's slices that give the
/// input no model, and the tensors before or after the layers when the first or last slice gives
/// it none (mergekit merges each slice over its own sources).
public struct InputGaps: Sendable, Equatable {
    public var layers: [Range<Int>] = []
    public var beforeLayers = false
    public var afterLayers = false

    public init(layers: [Range<Int>] = [], beforeLayers: Bool = false, afterLayers: Bool = false) {
        self.layers = layers
        self.beforeLayers = beforeLayers
        self.afterLayers = afterLayers
    }

    /// Whether the input lacks tensor `name` by design.
    public func covers(_ name: String) -> Bool {
        if let layer = LayerGroups.layerIndex(of: name) { return layers.contains { $0.contains(layer) } }
        return LayerGroups.precedesTheLayers(name) ? beforeLayers : afterLayers
    }
}

/// Everything `fuse` will do, decided and checked before the first byte is written: which
/// tensors are merged or copied, from which inputs and base, into which dtype.
public struct MergePlan: Sendable {
    public struct Item: Sendable {
        public enum Action: Equatable, Sendable {
            case merge
            /// Copied byte for byte from the base, else the first input that has it.
            case copy(reason: String)
        }

        /// The item's position in `MergePlan.items`.
        public let number: Int
        public let name: String
        /// Output name, dtype and shape.
        public let output: TensorInfo
        /// `(input number, tensor index in that input)` for every input holding the tensor.
        public let sources: [(input: Int, index: Int)]
        /// The tensor's index in the base, when the plan has a base.
        public let base: Int?
        public let action: Action
    }

    /// The models merged, in order (not the base, unless the method merges it as an input).
    public let inputs: [Checkpoint]
    /// The model the inputs were fine-tuned from (`--base`), for methods that use one.
    public let base: Checkpoint?
    public let items: [Item]

    /// Opens readers of every source of `item`.
    public func readers(_ item: Item) throws -> [TensorReader] {
        try item.sources.map { try inputs[$0.input].reader(for: $0.index) }
    }

    /// The base first, then the inputs: every model the plan reads.
    public var models: [Checkpoint] { (base.map { [$0] } ?? []) + inputs }

    /// Checks the inputs (and the base) against each other and decides every tensor's fate.
    /// With a base, every merged tensor must be in the base; the output follows the base's order.
    ///
    /// - Parameters:
    ///   - outputDType: `nil` keeps each tensor's dtype from the base, else the first input.
    ///   - filter: unselected tensors are copied from the base, else the first input.
    ///   - gaps: tensors inputs lack by design (`InputGaps`), by input number.
    public init(inputs: [Checkpoint], base: Checkpoint? = nil, filter: TensorFilter, onMissing: OnMissing,
                outputDType: DType?, gaps: [Int: InputGaps] = [:]) throws {
        guard inputs.count >= 1 || base != nil else { throw WSAMergeError.usage("fuse needs at least one input") }
        self.inputs = inputs
        self.base = base
        let models = (base.map { [$0] } ?? []) + inputs
        // Names: the first model's storage order, then names only later models have.
        var names: [String] = []
        var seen = Set<ByteKey>()  // names compare byte-wise (NFC and NFD spellings differ)
        for checkpoint in models {
            for tensor in checkpoint.tensors where seen.insert(ByteKey(tensor.name)).inserted { names.append(tensor.name) }
        }
        if models.count >= 2 {
            let shared = models[0].tensors.contains { tensor in models.dropFirst().allSatisfy { $0.index(of: tensor.name) != nil } }
            if !shared, let first = models.first(where: { !$0.tensors.isEmpty }),
               let other = models.first(where: { $0 !== first && !$0.tensors.isEmpty }) {
                let example = "'\(first.tensors[0].name)' in \(first.path), '\(other.tensors[0].name)' in \(other.path)"
                let error = WSAMergeError.malformed(file: other.path, reason: "the models share no tensor name (e.g. \(example)), so nothing would be merged")
                if let prefix = Self.prefix(explaining: first, other) ?? Self.prefix(explaining: other, first) {
                    throw WSAMergeError.hinted(error, .stripPrefix(prefix))
                }
                throw error
            }
        }
        var missingReports: [String] = []
        var items: [Item] = []
        for name in names {
            var sources: [(input: Int, index: Int)] = []
            for (k, checkpoint) in inputs.enumerated() {
                if let i = checkpoint.index(of: name) { sources.append((k, i)) }
            }
            let baseIndex = base?.index(of: name)
            let unexpected = inputs.indices.filter { k in !sources.contains { $0.input == k } && gaps[k]?.covers(name) != true }
            let missing = !unexpected.isEmpty || (base != nil && baseIndex == nil)
            if missing {
                switch onMissing {
                case .error:
                    var lacking = unexpected.map { inputs[$0].path }
                    if let base, baseIndex == nil { lacking.insert("the base \(base.path)", at: 0) }
                    missingReports.append("'\(name)' is missing from \(lacking.joined(separator: ", "))")
                    continue
                case .intersection:
                    continue
                case .union:
                    // A method with a base merges against it: a tensor the base lacks cannot be.
                    if let base, baseIndex == nil {
                        missingReports.append("'\(name)' is missing from the base \(base.path), which a union cannot merge it against")
                        continue
                    }
                }
            }
            items.append(try Self.plan(items.count, name, sources: sources, base: baseIndex, inputs: inputs, baseModel: base, filter: filter,
                                       outputDType: outputDType))
        }
        if !missingReports.isEmpty {
            let shown = missingReports.prefix(5).joined(separator: "; ")
            let more = missingReports.count > 5 ? " (and \(missingReports.count - 5) more)" : ""
            throw WSAMergeError.hinted(.malformed(file: models[0].path, reason: "tensor sets differ: \(shown)\(more)"),
                                       onMissing == .union ? .commonOnly : .onMissing)
        }
        guard !items.isEmpty else { throw WSAMergeError.malformed(file: models[0].path, reason: "no tensor to write") }
        self.items = items
    }

    /// The leading prefix that, removed from `prefixed`'s names, gives names of `plain` (the most
    /// frequent such prefix among its first 256 names), e.g. `bert.` or `0.auto_model.`.
    static func prefix(explaining plain: Checkpoint, _ prefixed: Checkpoint) -> String? {
        let names = Set(plain.tensors.map(\.name))
        var counts: [String: Int] = [:]
        for tensor in prefixed.tensors.prefix(256) {
            let name = tensor.name
            var index = name.startIndex
            while let dot = name[index...].firstIndex(of: ".") {
                index = name.index(after: dot)
                if names.contains(String(name[index...])) {
                    counts[String(name[..<index]), default: 0] += 1
                    break
                }
            }
        }
        return counts.max { $0.value < $1.value || ($0.value == $1.value && $0.key > $1.key) }?.key
    }

    private static func plan(_ number: Int, _ name: String, sources: [(input: Int, index: Int)], base: Int?, inputs: [Checkpoint],
                             baseModel: Checkpoint?, filter: TensorFilter, outputDType: DType?) throws -> Item {
        // Every holder of the tensor: the base first.
        var holders: [(checkpoint: Checkpoint, index: Int)] = []
        if let baseModel, let base { holders.append((baseModel, base)) }
        holders += sources.map { (inputs[$0.input], $0.index) }
        let infos = holders.map { $0.checkpoint.tensors[$0.index] }
        let first = infos[0]
        let firstPath = holders[0].checkpoint.path
        for (holder, info) in zip(holders, infos) where info.shape != first.shape {
            throw WSAMergeError.malformed(file: holder.checkpoint.path, tensor: name,
                                          reason: "shape \(info.shape) differs from \(first.shape) in \(firstPath)")
        }
        func copy(_ reason: String) -> Item {
            Item(number: number, name: name, output: first, sources: sources, base: base, action: .copy(reason: reason))
        }
        if !filter.selects(name) { return copy("excluded by the tensor filters") }
        let allFloat = infos.allSatisfy { $0.dtype.isFloat && $0.dtype.isDecodable }
        // A tensor only one model holds (`--on-missing union`, or a single input): float ones
        // still go through the strategy, so `--dtype` applies; the others are copied.
        if holders.count == 1 && !allFloat { return copy("only in \(firstPath)") }
        if !allFloat {
            if infos.contains(where: { $0.dtype.isFloat && $0.dtype.isDecodable }) && infos.contains(where: { !$0.dtype.isFloat }) {
                throw WSAMergeError.malformed(file: firstPath, tensor: name,
                                              reason: "dtypes differ between inputs (\(infos.map(\.dtype.rawValue).joined(separator: ", "))): cannot merge an integer tensor with a float one")
            }
            try requireIdentical(name, holders: holders)
            let kind = first.dtype.isFloat || first.dtype == .C64 ? "not decodable (\(first.dtype.rawValue))" : "integer/bool"
            return copy("\(kind), identical in every input")
        }
        let dtype = outputDType ?? first.dtype
        guard dtype.isEncodable else {
            throw WSAMergeError.hinted(.malformed(file: firstPath, tensor: name, reason: "cannot write merged values as \(dtype.rawValue)"),
                                       .outputDType)
        }
        let output = try TensorInfo(name: name, dtype: dtype, shape: first.shape, file: firstPath)
        return Item(number: number, name: name, output: output, sources: sources, base: base, action: .merge)
    }

    /// Refuses tensors that cannot be merged unless every input holds the same bytes.
    private static func requireIdentical(_ name: String, holders: [(checkpoint: Checkpoint, index: Int)]) throws {
        let infos = holders.map { $0.checkpoint.tensors[$0.index] }
        let differ = WSAMergeError.malformed(file: holders[0].checkpoint.path, tensor: name,
                                             reason: "\(infos[0].dtype.rawValue) tensors cannot be merged and differ between inputs")
        guard infos.allSatisfy({ $0.dtype == infos[0].dtype }) else { throw differ }
        guard try TensorReader.sameBytes(holders.map { try $0.checkpoint.reader(for: $0.index) }) else { throw differ }
    }
}
