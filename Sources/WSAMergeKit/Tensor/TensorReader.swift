#if canImport(Glibc)
import Glibc
#endif
import CKernels

/// Streams one tensor's bytes front to back in C order and little-endian byte order, whatever
/// the file stored: plain slices are read with bounded `pread`s, big-endian elements are swapped
/// in the caller's buffer, and Fortran-ordered arrays (rare) are transposed once in memory.
// @unchecked: a reader is advanced by one thread at a time; `Lockstep` runs each of a chunk's
// reads once and joins them before it asks for the next chunk's.
public final class TensorReader: @unchecked Sendable {
    /// One read of a chunk, which may run on any thread (see `reads`).
    public struct Read: Sendable {
        let run: @Sendable () throws -> Void
    }

    public let tensor: TensorInfo
    private var stream: any ByteStream
    /// Bytes handed out so far.
    public private(set) var position = 0

    /// Whether this reader may read while readers of other tensors of its file do, on other
    /// threads (`TensorSource.readsConcurrently`).
    let readsConcurrently: Bool

    init(_ source: any TensorSource, anyOrder: Bool = false) throws {
        tensor = source.tensor
        stream = try anyOrder ? source.makeStreamInAnyOrder() : source.makeStream()
        readsConcurrently = source.readsConcurrently
    }

    /// Bytes not read yet.
    public var remaining: Int { tensor.byteCount - position }

    /// Reads runs of `count` bytes starting at bytes `starts` (ascending, non-overlapping, from
    /// the current position on) into `buffer`, one after another: a `pread` each for a slice of
    /// a plain file, else by skipping and reading in order. The position moves past the last run.
    func readRuns(at starts: [Int], count: Int, into buffer: UnsafeMutableRawPointer) throws {
        guard var slice = stream as? FileSliceStream else {
            var next = position
            for (r, start) in starts.enumerated() {
                try skip(start - next)
                try read(into: UnsafeMutableRawBufferPointer(start: buffer + r * count, count: count))
                next = start + count
            }
            return
        }
        precondition(starts.allSatisfy { $0 >= position && $0 + count <= tensor.byteCount }, "read past the end of a tensor")
        let base = slice.offset - position
        do {
            for (r, start) in starts.enumerated() {
                slice.offset = base + start
                try slice.read(into: UnsafeMutableRawBufferPointer(start: buffer + r * count, count: count))
            }
        } catch let error as WSAMergeError {
            throw error.naming(tensor: tensor.name)
        }
        if let last = starts.last {
            stream = slice
            position = last + count
        }
    }

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
        position += buffer.count
    }

    /// Moves past the next `count` bytes: at once for a slice of a plain file, by reading them
    /// (in bounded pieces) for other sources.
    ///
    /// - Precondition: `count <= remaining`.
    public func skip(_ count: Int) throws {
        precondition(count >= 0 && count <= remaining, "skip past the end of a tensor")
        if var slice = stream as? FileSliceStream {
            slice.offset += count
            stream = slice
            position += count
            return
        }
        let piece = Swift.min(count, 1 << 20)
        guard piece > 0 else { return }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 8)
        defer { scratch.deallocate() }
        var left = count
        while left > 0 {
            let n = Swift.min(left, piece)
            try read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<n]))
            left -= n
        }
    }

    /// The next `count` bytes, into the start of `buffer`, as reads that may run side by side
    /// on different threads: pieces of about `pieceBytes` (whole elements, in any order) for a
    /// slice of a plain file, where the position moves past them now; one read for other sources
    /// (archive members, transposed arrays), which only stream in order, and which moves the
    /// position when it runs. Each read must run once, and all of one call's reads before the
    /// next call's.
    ///
    /// - Precondition: `count <= remaining`, `count <= buffer.byteCount`.
    func reads(into buffer: RawBuffer, count: Int, pieceBytes: Int) -> [Read] {
        precondition(count <= remaining && count <= buffer.byteCount, "read past the end of a tensor")
        guard count > 0 else { return [] }
        guard var slice = stream as? FileSliceStream else {
            return [Read { [self] in try self.read(into: buffer.prefix(count)) }]
        }
        let width = slice.swapWidth, name = tensor.name, file = slice.file
        let element = Swift.max(1, tensor.dtype.byteWidth ?? 1)
        let piece = Swift.max(element, pieceBytes / element * element)
        let start = slice.offset
        slice.offset += count
        stream = slice
        position += count
        return stride(from: 0, to: count, by: piece).map { from in
            let length = Swift.min(count, from + piece) - from
            return Read {
                let part = UnsafeMutableRawBufferPointer(start: buffer.base + from, count: length)
                do {
                    try file.read(into: part, at: start + from)
                } catch let error as WSAMergeError {
                    throw error.naming(tensor: name)
                }
                if width > 1 { swapBytes(part, width: width) }
            }
        }
    }

    /// The whole tensor as a byte array (for small tensors and tests).
    public func readAll() throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: remaining)
        try bytes.withUnsafeMutableBytes { buffer throws in try read(into: buffer) }
        return bytes
    }

    /// Whether `readers` (from their positions on, the same number of bytes left in each) give
    /// the same bytes, compared in 1 MiB chunks; stops at the first chunk that differs.
    static func sameBytes(_ readers: [TensorReader]) throws -> Bool {
        precondition(readers.allSatisfy { $0.remaining == readers[0].remaining }, "tensors of different sizes compared")
        let chunk = 1 << 20
        let buffers = readers.map { _ in RawBuffer(byteCount: Swift.min(chunk, readers[0].remaining)) }
        while readers[0].remaining > 0 {
            let n = Swift.min(chunk, readers[0].remaining)
            for (reader, buffer) in zip(readers, buffers) { try reader.read(into: buffer.prefix(n)) }
            if buffers.dropFirst().contains(where: { memcmp($0.base, buffers[0].base, n) != 0 }) { return false }
        }
        return true
    }
}

/// Consecutive bytes of a file from `offset` on, byte-swapped in units of `swapWidth` when that
/// is more than 1.
struct FileSliceStream: ByteStream {
    let file: ReadableFile
    var offset: Int
    var swapWidth = 0

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        try file.read(into: buffer, at: offset)
        if swapWidth > 1 { swapBytes(buffer, width: swapWidth) }
        offset += buffer.count
    }
}

/// A Fortran-ordered array read whole and served in C order (rare in checkpoints; bounded by
/// `maxBytes` so memory stays small).
struct TransposedStream: ByteStream {
    static var maxBytes: Int {
        #if DEBUG
        if let maxBytesOverride { return maxBytesOverride }
        #endif
        return 256 << 20
    }

    #if DEBUG
    /// Tests lower the limit to refuse small arrays.
    @TaskLocal static var maxBytesOverride: Int?
    #endif

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

/// A Fortran-order array of a plain file served in C order, a block of `rows` indices of axis 0
/// at a time, in bounded memory: the block (shape `(rows, d1, …, dk)`) is itself a Fortran-order
/// array, gathered with one read per combination of the other axes (its `rows` elements are
/// contiguous in the file) and transposed in memory.
struct FortranTileStream: ChunkedStream {
    /// The bytes of one block (and as many again for its transpose).
    static var tileBytes: Int {
        #if DEBUG
        if let tileBytesOverride { return tileBytesOverride }
        #endif
        return 16 << 20
    }

    #if DEBUG
    /// Tests lower it to read many blocks.
    @TaskLocal static var tileBytesOverride: Int?
    #endif

    let slice: FileSlice
    let width: Int
    /// Length of axis 0, the elements of one index of axis 0, and the indices a block holds.
    let length: Int, columns: Int, rows: Int
    private var next = 0
    /// The current block in C order.
    var chunk: [UInt8] = []
    var served = 0

    /// Nil when one index of axis 0 alone takes more than `tileBytes`.
    init?(_ slice: FileSlice) {
        let shape = slice.tensor.shape
        width = slice.tensor.dtype.byteWidth!
        length = shape[0]
        columns = shape.dropFirst().reduce(1, *)
        guard columns * width <= Self.tileBytes else { return nil }
        rows = Swift.max(1, Self.tileBytes / (columns * width))
        self.slice = slice
    }

    mutating func fill() throws {
        guard next < length else { throw WSAMergeError.io(file: slice.path, reason: "read past the end of a Fortran-order array") }
        let count = Swift.min(rows, length - next), run = count * width
        var tile = [UInt8](repeating: 0, count: count * columns * width)
        try tile.withUnsafeMutableBytes { tile throws in
            for q in 0..<columns {
                try slice.file.read(into: UnsafeMutableRawBufferPointer(rebasing: tile[(q * run)..<((q + 1) * run)]),
                                    at: slice.offset + (q * length + next) * width)
            }
            if slice.swapWidth > 1 { swapBytes(tile, width: slice.swapWidth) }
        }
        chunk = [UInt8](repeating: 0, count: tile.count)
        let shape = ([count] + slice.tensor.shape.dropFirst()).filter { $0 != 1 }.map { Int64($0) }
        tile.withUnsafeBytes { from in
            chunk.withUnsafeMutableBytes { to in
                shape.withUnsafeBufferPointer { dims in
                    wsk_fortran_to_c(from.baseAddress, to.baseAddress, dims.baseAddress, Int32(dims.count), Int64(width))
                }
            }
        }
        next += count
        served = 0
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
