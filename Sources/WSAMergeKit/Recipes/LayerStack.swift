/// A checkpoint assembled from layer ranges of other checkpoints, without copying anything:
/// its sources are the originals' `TensorSource`s under new names. Used for a recipe's
/// `slices`: stacked by `passthrough` (the "frankenmerge"), or one per source position for
/// the other methods.
///
/// The rule: the output's layers are the slices' ranges in order, renumbered from 0
/// (`model.layers.N.` → the new index; the same for `h.N`, `blocks.N`, `layer.N`); each layer's
/// tensors are its source model's, in that model's storage order. Tensors outside the layers
/// keep the first slice's model's places around the layers; those before the layers
/// (embeddings, `LayerGroups.precedesTheLayers`) come from the first slice's model, the rest (final norm,
/// head) from the last slice's, as mergekit takes its pre- and post-weights.
public enum LayerStack {
    public struct Part: Sendable {
        public let checkpoint: Checkpoint
        public let layers: Range<Int>

        public init(_ checkpoint: Checkpoint, layers: Range<Int>) {
            self.checkpoint = checkpoint
            self.layers = layers
        }
    }

    /// The layer indices a checkpoint's tensor names hold, ascending.
    public static func layers(of checkpoint: Checkpoint) -> [Int] {
        Set(checkpoint.tensors.compactMap { LayerGroups.layerIndex(of: $0.name) }).sorted()
    }

    /// The stacked checkpoint, named `path` in messages and provenance. Every part's range must
    /// hold only layers its checkpoint has. A nil part (a slice that gives this input no model)
    /// is `gap` layers the checkpoint lacks; a nil first or last part, the tensors before or after
    /// the layers too (`InputGaps`).
    public static func stack(_ slots: [Part?], gaps: [Int] = [], path: String) throws -> Checkpoint {
        precondition(slots.contains { $0 != nil } && (gaps.isEmpty ? !slots.contains { $0 == nil } : gaps.count == slots.count))
        let parts = slots.compactMap { $0 }
        var layerSources: [any TensorSource] = []
        var next = 0
        for (slot, part) in slots.enumerated() {
            guard let part else {
                next += gaps[slot]
                continue
            }
            let byLayer = Dictionary(grouping: part.checkpoint.sources.indices.filter { LayerGroups.layerIndex(of: part.checkpoint.tensors[$0].name) != nil },
                                     by: { LayerGroups.layerIndex(of: part.checkpoint.tensors[$0].name)! })
            for layer in part.layers {
                guard let indices = byLayer[layer] else {
                    throw WSAMergeError.usage("\(part.checkpoint.path) has no layer \(layer)")
                }
                for i in indices {
                    let original = part.checkpoint.sources[i]
                    let name = LayerGroups.renaming(original.tensor.name, layer: next)
                    layerSources.append(RenamedSource(original, tensor: try TensorInfo(name: name, dtype: original.tensor.dtype,
                                                                                       shape: original.tensor.shape, file: original.path)))
                }
                next += 1
            }
        }
        var sources: [any TensorSource] = []
        var placed = false
        // The first part's model orders the tensors around the layers; those before them come
        // from the first slice's model, those after from the last slice's (none for a gap).
        let first = parts[0].checkpoint
        let (firstModel, lastModel) = (slots[0]?.checkpoint, slots[slots.count - 1]?.checkpoint)
        let last = Dictionary((lastModel?.sources ?? []).map { ($0.tensor.name, $0) }, uniquingKeysWith: { a, _ in a })
        // The tensors after the layers are the last model's: it must have the ones the first has,
        // and no others (a model with tied embeddings has no head of its own).
        func afterTheLayers(_ checkpoint: Checkpoint) -> Set<String> {
            Set(checkpoint.tensors.map(\.name).filter { LayerGroups.layerIndex(of: $0) == nil && !LayerGroups.precedesTheLayers($0) })
        }
        if let firstModel, let lastModel {
            let (expected, given) = (afterTheLayers(firstModel), afterTheLayers(lastModel))
            if let name = expected.symmetricDifference(given).min() {
                let (holder, lacking) = expected.contains(name) ? (firstModel, lastModel) : (lastModel, firstModel)
                throw WSAMergeError.malformed(file: lacking.path, tensor: name, reason: "the first and the last slice's models (the last gives the tensors after the layers) must hold the same ones; '\(holder.path)' has this one and this model has not (tied embeddings?)")
            }
        }
        let ordering = firstModel ?? lastModel ?? first
        for source in ordering.sources {
            let name = source.tensor.name
            if LayerGroups.layerIndex(of: name) == nil {
                if LayerGroups.precedesTheLayers(name) {
                    if firstModel != nil { sources.append(source) }
                } else if let after = last[name] {
                    sources.append(after)
                }
            } else if !placed {
                sources += layerSources
                placed = true
            }
        }
        if !placed { sources += layerSources }
        var files: [ReadableFile] = []
        var seen = Set<FileIdentity>()
        for part in parts {
            for file in part.checkpoint.files where seen.insert(file.identity).inserted { files.append(file) }
        }
        return Checkpoint(path: path, format: first.format, metadata: first.metadata, sources: sources, files: files)
    }

    /// Position `t` of each output layer for gradients: `i/(L−1)` for the i-th of a slice's L
    /// layers (1 for a one-layer slice), as mergekit evaluates them slice by slice.
    public static func positions(_ lengths: [Int]) -> [Int: Double] {
        var result: [Int: Double] = [:]
        var next = 0
        for length in lengths {
            for i in 0..<length {
                result[next] = length > 1 ? Double(i) / Double(length - 1) : 1
                next += 1
            }
        }
        return result
    }

}


/// `passthrough` for stacked slices while the registry has no `passthrough` of its own: the
/// one input's values, unchanged.
struct StackedLayers: MergeStrategy, TensorMerge {
    static let declaration = StrategyDeclaration(
        identifier: "passthrough", summary: "The one input unchanged (layer stacking with slices).",
        base: .none, inputs: 1...1, parameters: [])

    let context: MergeContext

    init(_ context: MergeContext) throws { self.context = context }

    func merge(_ item: MergePlan.Item, output: Lockstep.Output) throws -> TensorMergeResult {
        let nonFinite = try weightedAverage(try context.readers(item), weights: [1], jobs: context.jobs, output: output)
        return TensorMergeResult(method: "passthrough", nonFinite: nonFinite)
    }
}
