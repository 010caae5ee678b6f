/// `convert`: rewrites a checkpoint in another format, dtype or sharding.
public enum Converter {
    /// Writes the tensors of `checkpoint` that `filter` selects to `output`. Without `dtype` every
    /// tensor is copied byte for byte; with it, float tensors are re-encoded (ties to even) and
    /// integer and bool tensors are copied. Metadata is kept. A directory output also gets the
    /// files of `directory` (a model directory's config, tokenizer and card), put in place with
    /// the weights.
    ///
    /// - Returns: the tensors written.
    @discardableResult
    public static func convert(_ checkpoint: Checkpoint, to output: OutputOptions, dtype: DType?,
                               filter: TensorFilter, jobs: Int = 1, directory: ModelDirectoryOutput? = nil,
                               progress: Progress? = nil) throws -> [TensorInfo] {
        if let dtype, !DType.targets.contains(dtype) {
            throw WSAMergeError.usage("--dtype \(dtype.rawValue) is not a supported target (use F64, F32, F16 or BF16)")
        }
        guard !checkpoint.tensors.isEmpty else {
            throw WSAMergeError.malformed(file: checkpoint.path, reason: "holds no tensors; there is nothing to convert")
        }
        let selected = checkpoint.tensors.indices.filter { filter.selects(checkpoint.tensors[$0].name) }
        guard !selected.isEmpty else {
            throw WSAMergeError.usage("\(checkpoint.path): no tensor matches the --include/--exclude filters")
        }
        var outputs: [TensorInfo] = []
        for i in selected {
            let tensor = checkpoint.tensors[i]
            var target = tensor.dtype
            if let dtype, tensor.dtype.isFloat, tensor.dtype != dtype {
                guard tensor.dtype.isDecodable else {
                    throw WSAMergeError.malformed(file: checkpoint.path, tensor: tensor.name,
                                                  reason: "cannot convert \(tensor.dtype.rawValue) (\(tensor.dtype.undecodableReason!))")
                }
                target = dtype
            }
            outputs.append(try TensorInfo(name: tensor.name, dtype: target, shape: tensor.shape, file: output.path))
        }
        // A sentence-transformers module's weights go to its own folder of a directory output.
        let writer = try ModuleRoutingWriter.make(output, tensors: outputs, metadata: checkpoint.metadata, inputs: checkpoint.identities,
                                                  modules: checkpoint.modules)
        progress?.start(tensors: outputs.count, bytes: outputs.reduce(0) { $0 + $1.byteCount })
        for (i, target) in zip(selected, outputs) {
            let reader = try checkpoint.reader(for: i)
            if reader.tensor.dtype == target.dtype {
                try copy(reader, to: writer)
            } else {
                try recode(reader, to: target.dtype, writer: writer, jobs: jobs)
            }
            progress?.tensorDone(bytes: target.byteCount)
        }
        if let directory { writer.add(companions: try directory.files()) }
        try writer.finish()
        progress?.finish()
        return outputs
    }

    /// Copies a tensor's bytes through a bounded buffer.
    static func copy(_ reader: TensorReader, to writer: any CheckpointWriter) throws {
        let width = reader.tensor.dtype.byteWidth ?? 1
        let step = Swift.max(width, (4 << 20) / width * width)
        let buffer = RawBuffer(byteCount: Swift.min(step, reader.remaining))
        while reader.remaining > 0 {
            let slice = buffer.prefix(Swift.min(step, reader.remaining))
            try reader.read(into: slice)
            try writer.write(UnsafeRawBufferPointer(slice))
        }
    }

    /// Decodes a tensor to float64 and encodes it as `dtype` (ties to even), streamed by `Lockstep`.
    static func recode(_ reader: TensorReader, to dtype: DType, writer: any CheckpointWriter, jobs: Int) throws {
        try Lockstep.run([reader], jobs: jobs, output: Lockstep.Output(dtype: dtype, writer: writer), kernel: { inputs, count, out in
            out.update(from: inputs[0], count: count)
        }, fold: { _ in })
    }
}
