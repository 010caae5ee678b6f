/// A tensor that is a non-contiguous view of a storage (a transposed weight, a slice, an expanded
/// vector): its elements are gathered from the file in C order, a bounded chunk at a time, so a
/// large storage is never read whole.
struct StridedView: Sendable {
    let file: ReadableFile
    /// File offset of the storage's element 0.
    let base: Int
    /// Bytes per element.
    let width: Int
    let shape: [Int]
    /// Strides and offset in elements; validated (non-negative, the view inside its storage).
    let strides: [Int]
    let offset: Int

    var elementCount: Int { shape.reduce(1, *) }

    func open() -> StridedStream { StridedStream(view: self) }
}

/// A non-contiguous view of a PyTorch storage, served in C order.
struct StridedSource: TensorSource {
    let tensor: TensorInfo
    let view: StridedView
    /// Element width to byte-swap (big-endian data), or 0.
    let swapWidth: Int

    var path: String { view.file.path }
    var readsConcurrently: Bool { true }

    func makeStream() throws -> any ByteStream {
        swapWidth > 1 ? SwappedStream(stored: view.open(), width: swapWidth) : view.open()
    }
}

/// Serves a `StridedView`'s bytes in C order. Each chunk of up to `chunkElements` output elements
/// is gathered either from one read of the storage span it touches (when that span is small or
/// dense) or from reads of the runs of nearby elements, in storage order.
struct StridedStream: ChunkedStream {
    static let chunkElements = 1 << 18
    /// A chunk whose elements span at most this many storage bytes is read in one piece.
    static let denseSpanBytes = 16 << 20
    /// Elements closer than this many bytes are read together.
    static let gapBytes = 4096

    let view: StridedView
    /// The limits above, smaller in tests.
    let chunkElements: Int
    let denseSpanBytes: Int
    private var index: [Int]
    private var position: Int
    private var produced = 0
    var chunk: [UInt8] = []
    var served = 0

    init(view: StridedView, chunkElements: Int = Self.chunkElements, denseSpanBytes: Int = Self.denseSpanBytes) {
        self.view = view
        self.chunkElements = chunkElements
        self.denseSpanBytes = denseSpanBytes
        index = [Int](repeating: 0, count: view.shape.count)
        position = view.offset
    }

    /// The storage positions of the next `count` output elements, advancing the C-order index.
    private mutating func nextPositions(_ count: Int) -> [Int] {
        var positions = [Int](repeating: 0, count: count)
        let shape = view.shape, strides = view.strides
        for k in 0..<count {
            positions[k] = position
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                position += strides[d]
                if index[d] < shape[d] { break }
                position -= strides[d] * shape[d]
                index[d] = 0
                d -= 1
            }
        }
        return positions
    }

    mutating func fill() throws {
        let count = min(chunkElements, view.elementCount - produced)
        guard count > 0 else {
            throw WSAMergeError.io(file: view.file.path, reason: "read past the end of a strided tensor")
        }
        let width = view.width
        let positions = nextPositions(count)
        produced += count
        chunk = [UInt8](repeating: 0, count: count * width)
        served = 0
        let low = positions.min()!, high = positions.max()!
        let spanBytes = (high - low + 1) * width
        if spanBytes <= denseSpanBytes {
            let span = try view.file.readBytes(at: view.base + low * width, count: spanBytes)
            span.withUnsafeBytes { from in
                chunk.withUnsafeMutableBytes { to in
                    for k in 0..<count {
                        (to.baseAddress! + k * width).copyMemory(from: from.baseAddress! + (positions[k] - low) * width, byteCount: width)
                    }
                }
            }
            return
        }
        // Sparse: visit the elements in storage order and read each run of nearby ones at once.
        let order: [Int]
        if high < 1 << 45 && count <= 1 << 18 {
            // Position and index packed in one integer: a plain sort, no comparison closure.
            order = positions.enumerated().map { UInt64($0.element) << 18 | UInt64($0.offset) }.sorted().map { Int($0 & 0x3FFFF) }
        } else {
            order = positions.indices.sorted { positions[$0] < positions[$1] }
        }
        let gap = max(1, Self.gapBytes / width), maxRun = max(1, denseSpanBytes / width)
        var scratch: [UInt8] = []
        var r = 0
        while r < count {
            let start = positions[order[r]]
            var s = r
            while s + 1 < count, positions[order[s + 1]] - positions[order[s]] <= gap, positions[order[s + 1]] - start < maxRun {
                s += 1
            }
            let runBytes = (positions[order[s]] - start + 1) * width
            if scratch.count < runBytes { scratch = [UInt8](repeating: 0, count: runBytes) }
            try scratch.withUnsafeMutableBytes { raw throws in
                try view.file.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<runBytes]), at: view.base + start * width)
            }
            scratch.withUnsafeBytes { from in
                chunk.withUnsafeMutableBytes { to in
                    for t in r...s {
                        let k = order[t]
                        (to.baseAddress! + k * width).copyMemory(from: from.baseAddress! + (positions[k] - start) * width, byteCount: width)
                    }
                }
            }
            r = s + 1
        }
    }
}
