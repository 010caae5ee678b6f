/// Where one tensor's stored bytes come from. A format's reader makes one source per tensor;
/// `TensorReader` streams it. A new format is a folder under `Formats/` whose reader builds a
/// `Checkpoint` of sources, plus one line in `CheckpointReader`.
public protocol TensorSource: Sendable {
    /// The tensor: name, dtype and shape (so its byte size).
    var tensor: TensorInfo { get }
    /// The file the bytes are read from, for messages.
    var path: String { get }
    /// Whether this tensor may be read while the checkpoint's other tensors are read on other
    /// threads (not for members of one libzip archive, nor for tensors transposed in memory).
    var readsConcurrently: Bool { get }
    /// A stream of the tensor's bytes from the start, in C order and little-endian.
    func makeStream() throws -> any ByteStream
    /// The same elements in any order (for passes whose result does not depend on it, such as
    /// statistics): the stored order where serving C order would need a transpose.
    func makeStreamInAnyOrder() throws -> any ByteStream
}

extension TensorSource {
    public func makeStreamInAnyOrder() throws -> any ByteStream { try makeStream() }
}

/// A source of consecutive bytes.
public protocol ByteStream {
    /// Fills `buffer` completely with the next bytes.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws
}

/// A stream made a chunk at a time: `fill()` sets `chunk` to the next bytes and `served` to 0;
/// reads of any size are served from it.
protocol ChunkedStream: ByteStream {
    var chunk: [UInt8] { get set }
    /// Bytes of `chunk` already read.
    var served: Int { get set }
    mutating func fill() throws
}

extension ChunkedStream {
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            if served == chunk.count { try fill() }
            let n = Swift.min(buffer.count - done, chunk.count - served)
            chunk.withUnsafeBytes { from in (buffer.baseAddress! + done).copyMemory(from: from.baseAddress! + served, byteCount: n) }
            served += n
            done += n
        }
    }
}

/// A tensor stored as one byte range of a plain file, C order (safetensors, `.npy`, PyTorch
/// storages): read with bounded `pread`s, in pieces side by side.
public struct FileSlice: TensorSource {
    public let tensor: TensorInfo
    let file: ReadableFile
    let offset: Int
    /// Element width to byte-swap (big-endian data), or 0.
    let swapWidth: Int

    public init(tensor: TensorInfo, file: ReadableFile, offset: Int, bigEndian: Bool = false) {
        self.tensor = tensor
        self.file = file
        self.offset = offset
        swapWidth = bigEndian ? tensor.dtype.swapWidth : 0
    }

    public var path: String { file.path }
    public var readsConcurrently: Bool { true }

    public func makeStream() throws -> any ByteStream { FileSliceStream(file: file, offset: offset, swapWidth: swapWidth) }
}

/// A tensor stored in Fortran (column-major) order, served in C order: read whole and transposed
/// up to `TransposedStream.maxBytes` (one tensor at a time); larger ones of a plain file (`.npy`)
/// a block at a time (`FortranTileStream`); or streamed as stored to passes that take any order.
public struct FortranOrder: TensorSource {
    let stored: any TensorSource

    public init(_ stored: any TensorSource) { self.stored = stored }

    public var tensor: TensorInfo { stored.tensor }
    public var path: String { stored.path }
    public var readsConcurrently: Bool { false }

    public func makeStream() throws -> any ByteStream {
        if tensor.byteCount <= TransposedStream.maxBytes {
            return try TransposedStream(fortranOrdered: try stored.makeStream(), tensor: tensor)
        }
        if let slice = stored as? FileSlice, let tiles = FortranTileStream(slice) { return tiles }
        let kind = stored is FileSlice ? "whose elements along the first axis take more than \(FortranTileStream.tileBytes >> 20) MiB"
            : "in .npz archives"
        throw WSAMergeError.malformed(file: path, tensor: tensor.name,
                                      reason: "Fortran-order arrays over \(TransposedStream.maxBytes >> 20) MiB \(kind) are read by stats and scope only (save it with numpy.ascontiguousarray to merge or convert it)")
    }

    /// The stored (column-major) order, streamed like any file slice, whatever the size.
    public func makeStreamInAnyOrder() throws -> any ByteStream { try stored.makeStream() }
}

/// A stream whose elements are byte-swapped as they are read (big-endian data).
struct SwappedStream: ByteStream {
    var stored: any ByteStream
    let width: Int

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        try stored.read(into: buffer)
        swapBytes(buffer, width: width)
    }
}

extension DType {
    /// The unit a big-endian element is swapped in: its width, but 4 for `C64` (two float32s).
    var swapWidth: Int { self == .C64 ? 4 : (byteWidth ?? 1) }
}
