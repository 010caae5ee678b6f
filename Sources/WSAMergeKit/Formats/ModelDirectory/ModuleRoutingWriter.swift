/// The writer of a directory output whose model has sentence-transformers modules: a tensor
/// named `2_Dense.<name>` goes, as `<name>`, to `<directory>/2_Dense/model.safetensors`, where
/// sentence-transformers loads it from; every other tensor to the directory's own weights.
final class ModuleRoutingWriter: CheckpointWriter {
    /// The directory's own writer (number 0 in `route`) and one per module (1, 2, …).
    private let root: any CheckpointWriter
    private let modules: [SafetensorsWriter]
    /// Per output tensor (in write order): its writer's number and byte size.
    private let route: [Int]
    private let sizes: [Int]
    private var current = 0
    private var written = 0

    /// A routing writer, or the plain one when no tensor belongs to one of `modules`.
    static func make(_ options: OutputOptions, tensors: [TensorInfo], metadata: [String: String], inputs: Set<FileIdentity>,
                     modules: [String]) throws -> any CheckpointWriter {
        guard case .sharded = options.layout, !modules.isEmpty else {
            return try makeWriter(options, tensors: tensors, metadata: metadata, inputs: inputs)
        }
        func module(of tensor: TensorInfo) -> Int? {
            modules.firstIndex { tensor.name.utf8.starts(with: ($0 + ".").utf8) }
        }
        guard tensors.contains(where: { module(of: $0) != nil }) else {
            return try makeWriter(options, tensors: tensors, metadata: metadata, inputs: inputs)
        }
        let main = tensors.filter { module(of: $0) == nil }
        let root = try makeWriter(options, tensors: main, metadata: metadata, inputs: inputs)
        var moduleWriters: [SafetensorsWriter] = []
        var slot: [Int: Int] = [:]
        var directory = options.path
        while directory.count > 1 && directory.hasSuffix("/") { directory.removeLast() }
        try makeDirectory(directory)
        for (m, name) in modules.enumerated() {
            let own = try tensors.filter { module(of: $0) == m }.map { tensor in
                try TensorInfo(name: String(decoding: tensor.name.utf8.dropFirst(name.utf8.count + 1), as: UTF8.self),
                               dtype: tensor.dtype, shape: tensor.shape, file: options.path)
            }
            guard !own.isEmpty else { continue }
            try makeDirectory(joinPath(directory, name))
            slot[m] = 1 + moduleWriters.count
            moduleWriters.append(try SafetensorsWriter(destination: joinPath(joinPath(directory, name), "model.safetensors"), tensors: own,
                                                       metadata: metadata, force: options.force, inputs: inputs))
        }
        return ModuleRoutingWriter(root: root, modules: moduleWriters, route: tensors.map { module(of: $0).flatMap { slot[$0] } ?? 0 },
                                   sizes: tensors.map(\.byteCount))
    }

    private init(root: any CheckpointWriter, modules: [SafetensorsWriter], route: [Int], sizes: [Int]) {
        self.root = root
        self.modules = modules
        self.route = route
        self.sizes = sizes
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            while current < sizes.count && sizes[current] == 0 { current += 1 }
            guard current < sizes.count else {
                throw WSAMergeError.io(file: "", reason: "internal error: more bytes written than the tensors hold")
            }
            let n = Swift.min(sizes[current] - written, bytes.count - offset)
            let writer: any CheckpointWriter = route[current] == 0 ? root : modules[route[current] - 1]
            try writer.write(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
            offset += n
            written += n
            if written == sizes[current] {
                current += 1
                written = 0
            }
        }
    }

    /// The modules' weights are linked in with the directory's own weights and companions.
    func finish() throws {
        root.add(companions: try modules.map { try $0.completed() })
        try root.finish()
    }

    func add(companions: [OutputFile]) { root.add(companions: companions) }
}
