import CKernels
import Dispatch
import Synchronization

/// Streams several same-shaped tensors side by side: each chunk of every input is read, then
/// the chunk's blocks are decoded to float64 and handed to a kernel in parallel; the kernel's
/// output block (if any) is rounded once to the output dtype and written in order. A pass may
/// also give a raw kernel, which works on the stored bytes of a block directly (BF16/F16/F32/F64,
/// no float64 copy) and hands back the blocks it cannot finish.
///
/// The workers read the next chunk (in pieces, `TensorReader.reads`) before they take the blocks
/// of the current one, all from one work counter, so reading (copying out of the page cache) is
/// shared by every core like the arithmetic, with no thread of its own to wait for; a writer
/// thread writes the previous chunk meanwhile (double-buffered input, triple-buffered output).
/// Memory stays at a few chunks whatever the tensor size.
///
/// The partition (see `Partition`) does not depend on `jobs`, per-element results do not
/// depend on the thread that computed them, and per-block results reach `fold` in block order,
/// so every `--jobs` gives the same bytes.
public struct Lockstep {
    /// Where a pass's output goes: the dtype to encode and the writer.
    // @unchecked: the writer is used by one thread at a time, the pass's writer queue (one
    // write after another) and the caller only once the pass has drained that queue.
    public struct Output: @unchecked Sendable {
        let dtype: DType
        let writer: any CheckpointWriter
    }

    /// A block kernel: `inputs[k]` holds `count` decoded values of input `k`; a writing pass
    /// fills `output` with `count` values. Must be safe to call from several threads.
    public typealias Kernel<T> = @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ output: UnsafeMutablePointer<Double>) -> T

    /// A block kernel that also receives the C-order position of the block's first element
    /// (for per-element rules such as random draws and tie ranks).
    public typealias PositionedKernel<T> = @Sendable (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int,
                                                      _ output: UnsafeMutablePointer<Double>, _ position: Int) -> T

    /// A block kernel on the stored bytes: `inputs[k]` points at input `k`'s first element of the
    /// block, and a writing pass writes the encoded output at `output` itself. Returns nil when it
    /// cannot finish the block, which then goes through the decoded `Kernel`. It must give the
    /// same result and bytes as the decoded kernel.
    public typealias RawKernel<T> = @Sendable (_ inputs: [UnsafeRawPointer], _ count: Int, _ output: UnsafeMutableRawPointer?) -> T?

    /// A raw kernel that is also told where its block starts (like `PositionedKernel`).
    public typealias PositionedRawKernel<T> = @Sendable (_ inputs: [UnsafeRawPointer], _ count: Int, _ output: UnsafeMutableRawPointer?,
                                                         _ position: Int) -> T?

    /// A raw kernel that summarises each input's stored block on its own (`summary(elements,
    /// kind, count)`), or nil when some input's dtype is not read in place; a block goes to the
    /// decoded path as soon as one input's summary is nil.
    static func perInput<T>(_ readers: [TensorReader],
                            _ summary: @escaping @Sendable (UnsafeRawPointer, Int32, Int) -> T?) -> RawKernel<[T]>? {
        let kinds = readers.compactMap(\.tensor.dtype.rawKind)
        guard kinds.count == readers.count else { return nil }
        return { inputs, count, _ in
            var blocks: [T] = []
            blocks.reserveCapacity(inputs.count)
            for (input, kind) in zip(inputs, kinds) {
                guard let block = summary(input, kind, count) else { return nil }
                blocks.append(block)
            }
            return blocks
        }
    }

    /// Bytes per read item (a BF16 input's whole chunk; 64 KiB to 256 KiB pieces were slower).
    static let readPieceBytes = 1 << 20

    #if DEBUG
    /// Off, raw kernels are skipped and every block is decoded: tests compare the two paths
    /// within `$rawKernelsEnabled.withValue(false) { … }`. Release builds have no such switch.
    @TaskLocal static var rawKernelsEnabled = true
    #endif

    /// With `raw`, each block first goes to the raw kernel; blocks it cannot finish run `kernel`.
    public static func run<T: Sendable>(_ readers: [TensorReader], jobs: Int, output: Output?, raw: RawKernel<T>? = nil,
                                        kernel: @escaping Kernel<T>, fold: ([T]) throws -> Void) throws {
        try run(readers, jobs: jobs, output: output, raw: raw.map { raw in { @Sendable inputs, count, out, _ in raw(inputs, count, out) } },
                positioned: { inputs, count, out, _ in kernel(inputs, count, out) }, fold: fold)
    }

    /// `run` with a kernel that is told where its block starts. Blocks start at multiples of
    /// `Partition.blockElements`.
    public static func run<T: Sendable>(_ readers: [TensorReader], jobs: Int, output: Output?, raw: PositionedRawKernel<T>? = nil,
                                        positioned kernel: @escaping PositionedKernel<T>, fold: ([T]) throws -> Void) throws {
        #if DEBUG
        let raw = rawKernelsEnabled ? raw : nil
        #endif
        let count = readers[0].tensor.elementCount
        precondition(readers.allSatisfy { $0.tensor.elementCount == count })
        guard count > 0 else { return }
        let block = Partition.blockElements
        let chunk = Swift.min(Partition.chunkElements, count)
        let widths = readers.map { $0.tensor.dtype.byteWidth! }
        let dtypes = readers.map(\.tensor.dtype)
        let outWidth = output?.dtype.byteWidth ?? 0
        let workers = Swift.max(1, Swift.min(jobs, (chunk + block - 1) / block))
        let cache = BufferCache.shared
        // Per worker: one scratch block per input plus one for the output.
        let scratch = (0..<workers * (readers.count + 1)).map { _ in cache.take(byteCount: block * 8) }
        let inputBuffers = (0..<2).map { _ in widths.map { cache.take(byteCount: chunk * $0) } }
        let outputBuffers = (0..<3).map { _ in cache.take(byteCount: chunk * outWidth) }
        let writer = BackgroundWriter()
        defer {
            writer.drain()
            cache.give(scratch + inputBuffers.joined() + outputBuffers)
        }

        /// The reads of the chunk starting at element `start` into input buffer set `slot`.
        func reads(_ start: Int, into slot: Int) -> [TensorReader.Read] {
            let n = Swift.min(chunk, count - start)
            return readers.indices.flatMap { k in
                readers[k].reads(into: inputBuffers[slot][k], count: n * widths[k], pieceBytes: Self.readPieceBytes)
            }
        }

        /// Runs `reads` and then `blocks` calls of `compute`, all on the workers, which take the next
        /// item as they finish one; rethrows the first read error.
        func run(_ reads: [TensorReader.Read], blocks: Int, _ compute: @Sendable (_ block: Int, _ worker: Int) -> Void) throws {
            // The error of the lowest-numbered read, so errors do not depend on timing.
            let failure = Mutex<(index: Int, error: any Error)?>(nil)
            parallelFor(reads.count + blocks, jobs: workers) { i, worker in
                if i < reads.count {
                    do { try reads[i].run() } catch {
                        failure.withLock { if $0 == nil || $0!.index > i { $0 = (i, error) } }
                    }
                } else {
                    compute(i - reads.count, worker)
                }
            }
            if let (_, error) = failure.withLock({ $0 }) { throw error }
        }

        try run(reads(0, into: 0), blocks: 0) { _, _ in }
        var start = 0
        var chunkNumber = 0
        while start < count {
            let n = Swift.min(chunk, count - start)
            let chunkStart = start
            let slot = chunkNumber % 2
            let next = start + n
            let encoded = outputBuffers[chunkNumber % 3]
            if output != nil { try writer.waitUntilWritable(encoded) }
            let raws = inputBuffers[slot]
            let blocks = (n + block - 1) / block
            let results = BlockResults<T>(count: blocks)
            // The next chunk is read by the same workers, before the blocks of this one.
            do {
                try run(next < count ? reads(next, into: 1 - slot) : [], blocks: blocks) { b, worker in
                    let first = b * block
                    let m = Swift.min(block, n - first)
                    if let raw, let result = raw(raws.indices.map { UnsafeRawPointer(raws[$0].base + first * widths[$0]) }, m,
                                                 output == nil ? nil : encoded.base + first * outWidth, chunkStart + first) {
                        results.set(b, result)
                        return
                    }
                    let base = worker * (dtypes.count + 1)
                    var inputs: [UnsafeMutablePointer<Double>] = []
                    inputs.reserveCapacity(dtypes.count)
                    for k in 0..<dtypes.count {
                        let values = scratch[base + k].doubles(m)
                        dtypes[k].decode(raws[k].base + first * widths[k], count: m, into: values)
                        inputs.append(values)
                    }
                    let values = scratch[base + dtypes.count].doubles(m)
                    results.set(b, kernel(inputs, m, values, chunkStart + first))
                    if let output {
                        output.dtype.encode(values, count: m, into: encoded.base + first * outWidth)
                    }
                }
            }
            if let output {
                let bytes = n * outWidth
                writer.write(encoded) { try output.writer.write(UnsafeRawBufferPointer(encoded.prefix(bytes))) }
            }
            try fold(results.values)
            start = next
            chunkNumber += 1
        }
        try writer.finishWrites()
    }
}

extension Lockstep {
    /// Reads the next `count` elements of each reader into `raw[k]`, the inputs side by side in
    /// pieces (for passes that hold whole rows at a time instead of streaming blocks).
    static func readGroup(_ readers: [TensorReader], count: Int, into raw: [RawBuffer], jobs: Int) throws {
        let reads = readers.indices.flatMap { k in
            readers[k].reads(into: raw[k], count: count * (readers[k].tensor.dtype.byteWidth ?? 1), pieceBytes: readPieceBytes)
        }
        _ = try parallelMap(sizes: reads.map { _ in 1 }, jobs: jobs, serial: !readers.allSatisfy(\.readsConcurrently)) { i, _ in
            try reads[i].run()
        }
    }

    /// `readGroup`, then the elements decoded to float64 into `values[k]`, side by side in pieces.
    static func readDecoded(_ readers: [TensorReader], count: Int, raw: [RawBuffer], into values: [RawBuffer], jobs: Int) throws {
        try readGroup(readers, count: count, into: raw, jobs: jobs)
        let dtypes = readers.map(\.tensor.dtype), piece = Partition.blockElements * 16
        _ = try parallelMap(sizes: [Int](repeating: 1, count: (count + piece - 1) / piece), jobs: jobs) { p, _ in
            let from = p * piece, n = Swift.min(piece, count - from)
            for (k, dtype) in dtypes.enumerated() {
                dtype.decode(raw[k].base + from * (dtype.byteWidth ?? 1), count: n, into: values[k].doubles(count) + from)
            }
        }
    }
}

/// The writer thread of a pass; its first error is rethrown.
final class BackgroundWriter: Sendable {
    private struct State {
        var pending: [ObjectIdentifier: DispatchGroup] = [:]
        var error: (any Error)?
    }

    private let writeQueue = DispatchQueue(label: "wsamerge.write")
    private let state = Mutex(State())

    /// Queues `body`, which writes from `buffer`; the buffer is busy until it has run.
    func write(_ buffer: RawBuffer, _ body: @escaping @Sendable () throws -> Void) {
        let group = DispatchGroup()
        state.withLock { $0.pending[ObjectIdentifier(buffer)] = group }
        writeQueue.async(group: group) {
            guard self.state.withLock({ $0.error }) == nil else { return }
            do { try body() } catch { self.state.withLock { $0.error = error } }
        }
    }

    /// Waits until no queued write still reads from `buffer`.
    func waitUntilWritable(_ buffer: RawBuffer) throws {
        let group = state.withLock { $0.pending[ObjectIdentifier(buffer)] }
        group?.wait()
        if let error = state.withLock({ $0.error }) { throw error }
    }

    func finishWrites() throws {
        writeQueue.sync {}
        if let error = state.withLock({ $0.error }) { throw error }
    }

    /// Waits for everything queued (also on an error path, before buffers are freed).
    func drain() {
        writeQueue.sync {}
    }
}

/// Per-block results of a pass, set by the workers (each block once) and read in block order
/// after they finish.
final class BlockResults<T: Sendable>: Sendable {
    private let slots: Mutex<[T?]>

    init(count: Int) { slots = Mutex([T?](repeating: nil, count: count)) }

    func set(_ block: Int, _ value: T) { slots.withLock { $0[block] = value } }

    var values: [T] { slots.withLock { $0.map { $0! } } }
}

/// Whether `values` holds a NaN or an infinity (`wsk_nonfinite`).
@inline(__always)
func containsNonFinite(_ values: UnsafePointer<Double>, _ count: Int) -> Bool {
    wsk_nonfinite(values, count) != 0
}
