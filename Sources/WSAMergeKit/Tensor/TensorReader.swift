import CKernels

/// Streams one tensor's bytes front to back in C order and little-endian byte order, whatever
/// the file stored: plain slices are read with bounded `pread`s, big-endian elements are swapped
/// in the caller's buffer, and Fortran-ordered arrays (rare) are transposed once in memory.
public final class TensorReader {
    public let tensor: TensorInfo
    private var stream: any ByteStream
    private let bigEndian: Bool
    private let swapWidth: Int
    /// Bytes handed out so far.
    public private(set) var position = 0

    init(tensor: TensorInfo, location: TensorLocation) throws {
        self.tensor = tensor
        self.bigEndian = location.bigEndian && (tensor.dtype.byteWidth ?? 1) > 1
        // C64 is two float32s: each part is swapped on its own.
        swapWidth = tensor.dtype == .C64 ? 4 : (tensor.dtype.byteWidth ?? 1)
        var raw: any ByteStream
        switch location.source {
        case .file(let file, let offset):
            raw = FileSliceStream(file: file, offset: offset)
        case .zipMember(let archive, let index, let skip):
            raw = try archive.openMember(index: index, skip: skip, limit: tensor.byteCount)
        }
        if location.transposes(tensor) {
            guard tensor.byteCount <= TransposedStream.maxBytes else {
                throw WSAMergeError.malformed(file: location.path, tensor: tensor.name,
                                              reason: "Fortran-order arrays over \(TransposedStream.maxBytes >> 20) MiB are not supported (save it with numpy.ascontiguousarray)")
            }
            raw = try TransposedStream(fortranOrdered: raw, tensor: tensor)
        }
        stream = raw
    }

    /// Bytes not read yet.
    public var remaining: Int { tensor.byteCount - position }

    /// Fills `buffer` with the next `buffer.count` bytes of the tensor.
    ///
    /// - Precondition: `buffer.count <= remaining`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(buffer.count <= remaining, "read past the end of a tensor")
        guard buffer.count > 0 else { return }
        do {
            try stream.read(into: buffer)
        } catch let error as WSAMergeError {
            throw error.naming(tensor: tensor.name)
        }
        if bigEndian { swapBytes(buffer, width: swapWidth) }
        position += buffer.count
    }

    /// The next `buffer.count` bytes as reads that may run side by side on different threads:
    /// pieces of about `pieceBytes` (whole elements, in any order) for a slice of a plain file,
    /// where the position moves past them now; one read for other sources (archive members,
    /// transposed arrays), which only stream in order, and which moves the position when it runs.
    /// Each read must run once, and all of one call's reads before the next call's.
    ///
    /// - Precondition: `buffer.count <= remaining`.
    public func reads(into buffer: UnsafeMutableRawBufferPointer, pieceBytes: Int) -> [() throws -> Void] {
        precondition(buffer.count <= remaining, "read past the end of a tensor")
        guard buffer.count > 0 else { return [] }
        guard var slice = stream as? FileSliceStream else {
            return [{ [self] in try self.read(into: buffer) }]
        }
        let width = swapWidth, bigEndian = bigEndian, name = tensor.name, file = slice.file
        let piece = Swift.max(width, pieceBytes / width * width)
        let start = slice.offset
        slice.offset += buffer.count
        stream = slice
        position += buffer.count
        return stride(from: 0, to: buffer.count, by: piece).map { from in
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[from..<Swift.min(buffer.count, from + piece)])
            return {
                do {
                    try file.read(into: part, at: start + from)
                } catch let error as WSAMergeError {
                    throw error.naming(tensor: name)
                }
                if bigEndian { swapBytes(part, width: width) }
            }
        }
    }

    /// The whole tensor as a byte array (for small tensors and tests).
    public func readAll() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: remaining)
        try bytes.withUnsafeMutableBytes { buffer throws in try read(into: buffer) }
        return bytes
    }
}

/// A source of consecutive bytes.
protocol ByteStream {
    /// Fills `buffer` completely with the next bytes.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws
}

/// Consecutive bytes of a file from `offset` on.
struct FileSliceStream: ByteStream {
    let file: ReadableFile
    var offset: Int

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        try file.read(into: buffer, at: offset)
        offset += buffer.count
    }
}

/// A Fortran-ordered array read whole and served in C order (rare in checkpoints; bounded by
/// `maxBytes` so memory stays small).
struct TransposedStream: ByteStream {
    static let maxBytes = 256 << 20

    private var bytes: [UInt8]
    private var offset = 0

    init(fortranOrdered source: any ByteStream, tensor: TensorInfo) throws {
        var source = source
        var stored = [UInt8](repeating: 0, count: tensor.byteCount)
        try stored.withUnsafeMutableBytes { buffer throws in try source.read(into: buffer) }
        bytes = [UInt8](repeating: 0, count: tensor.byteCount)
        // Unit dimensions change no offset: dropped, the walk is over the others only, and the
        // C kernel's cost is linear in the element count.
        let shape = tensor.shape.filter { $0 != 1 }.map { Int64($0) }
        let width = Int64(tensor.dtype.byteWidth!)
        stored.withUnsafeBytes { from in
            bytes.withUnsafeMutableBytes { to in
                shape.withUnsafeBufferPointer { dims in
                    wsk_fortran_to_c(from.baseAddress, to.baseAddress, dims.baseAddress, Int32(dims.count), width)
                }
            }
        }
    }

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        bytes.withUnsafeBytes { from in
            buffer.baseAddress!.copyMemory(from: from.baseAddress! + offset, byteCount: buffer.count)
        }
        offset += buffer.count
    }
}

/// Reverses the bytes of each `width`-byte element of `buffer` in place.
func swapBytes(_ buffer: UnsafeMutableRawBufferPointer, width: Int) {
    let base = buffer.baseAddress!
    var i = 0
    while i + width <= buffer.count {
        var lo = i, hi = i + width - 1
        while lo < hi {
            let t = base.load(fromByteOffset: lo, as: UInt8.self)
            base.storeBytes(of: base.load(fromByteOffset: hi, as: UInt8.self), toByteOffset: lo, as: UInt8.self)
            base.storeBytes(of: t, toByteOffset: hi, as: UInt8.self)
            lo += 1; hi -= 1
        }
        i += width
    }
}
