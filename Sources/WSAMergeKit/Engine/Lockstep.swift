import CKernels
import Dispatch

/// Streams several same-shaped tensors side by side: each chunk of every input is read, then
/// the chunk's blocks are decoded to float64 and handed to a kernel in parallel; the kernel's
/// output block (if any) is rounded once to the output dtype and written in order. A pass may
/// also give a raw kernel, which works on the stored bytes of a block directly (BF16/F32/F64,
/// no float64 copy) and hands back the blocks it cannot finish.
///
/// Reading the next chunk and writing the previous one run on their own threads while the
/// current chunk is computed (double-buffered input, triple-buffered output), so I/O and
/// arithmetic overlap; memory stays at a few chunks whatever the tensor size.
///
/// The partition (see `Partition`) does not depend on `jobs`, per-element results do not
/// depend on the thread that computed them, and per-block results reach `fold` in block order,
/// so every `--jobs` gives the same bytes.
public struct Lockstep {
    /// Where a pass's output goes: the dtype to encode and the writer.
    public struct Output {
        let dtype: DType
        let writer: any CheckpointWriter
    }

    /// A block kernel: `inputs[k]` holds `count` decoded values of input `k`; a writing pass
    /// fills `output` with `count` values. Must be safe to call from several threads.
    public typealias Kernel<T> = (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ output: UnsafeMutablePointer<Double>) -> T

    /// A block kernel on the stored bytes: `inputs[k]` points at input `k`'s first element of the
    /// block, and a writing pass writes the encoded output at `output` itself. Returns nil when it
    /// cannot finish the block, which then goes through the decoded `Kernel`. It must give the
    /// same result and bytes as the decoded kernel.
    public typealias RawKernel<T> = (_ inputs: [UnsafeRawPointer], _ count: Int, _ output: UnsafeMutableRawPointer?) -> T?

    /// A raw kernel that summarises each input's stored block on its own (`summary(elements,
    /// kind, count)`), or nil when some input's dtype is not read in place; a block goes to the
    /// decoded path as soon as one input's summary is nil.
    static func perInput<T>(_ readers: [TensorReader],
                            _ summary: @escaping (UnsafeRawPointer, Int32, Int) -> T?) -> RawKernel<[T]>? {
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

    /// Off, raw kernels are skipped and every block is decoded (tests compare the two paths).
    nonisolated(unsafe) static var rawKernelsEnabled = true

    /// With `raw`, each block first goes to the raw kernel; blocks it cannot finish run `kernel`.
    static func run<T>(_ readers: [TensorReader], jobs: Int, output: Output?, raw: RawKernel<T>? = nil,
                       kernel: @escaping Kernel<T>, fold: ([T]) throws -> Void) throws {
        let raw = rawKernelsEnabled ? raw : nil
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
        let io = BackgroundIO()
        defer {
            io.drain()
            cache.give(scratch + inputBuffers.joined() + outputBuffers)
        }

        /// Reads the chunk starting at element `start` into input buffer set `slot`.
        func read(_ start: Int, into slot: Int) throws {
            let n = Swift.min(chunk, count - start)
            // From four inputs on (a Fisher merge reads six), one thread cannot copy a chunk
            // out of the page cache as fast as the workers use it: two threads share the read.
            // (With three inputs, splitting was measured slower.)
            if readers.count >= 4 && jobs > 1 {
                var errors = [Error?](repeating: nil, count: readers.count)
                errors.withUnsafeMutableBufferPointer { errs in
                    DispatchQueue.concurrentPerform(iterations: 2) { half in
                        for k in stride(from: half, to: readers.count, by: 2) {
                            do { try readers[k].read(into: inputBuffers[slot][k].prefix(n * widths[k])) } catch { errs[k] = error }
                        }
                    }
                }
                if let error = errors.compactMap({ $0 }).first { throw error }
            } else {
                for (k, reader) in readers.enumerated() {
                    try reader.read(into: inputBuffers[slot][k].prefix(n * widths[k]))
                }
            }
        }

        try read(0, into: 0)
        var start = 0
        var chunkNumber = 0
        while start < count {
            let n = Swift.min(chunk, count - start)
            let slot = chunkNumber % 2
            let next = start + n
            if next < count { io.readAhead { try read(next, into: 1 - slot) } }
            let encoded = outputBuffers[chunkNumber % 3]
            if output != nil { try io.waitUntilWritable(encoded) }
            let raws = inputBuffers[slot]
            let blocks = (n + block - 1) / block
            var results = [T?](repeating: nil, count: blocks)
            results.withUnsafeMutableBufferPointer { out in
                parallelFor(blocks, jobs: workers) { b, worker in
                    let first = b * block
                    let m = Swift.min(block, n - first)
                    if let raw, let result = raw(raws.indices.map { UnsafeRawPointer(raws[$0].base + first * widths[$0]) }, m,
                                                 output == nil ? nil : encoded.base + first * outWidth) {
                        out[b] = result
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
                    out[b] = kernel(inputs, m, values)
                    if let output {
                        output.dtype.encode(values, count: m, into: encoded.base + first * outWidth)
                    }
                }
            }
            if let output {
                let bytes = n * outWidth
                io.write(encoded) { try output.writer.write(UnsafeRawBufferPointer(encoded.prefix(bytes))) }
            }
            try fold(results.map { $0! })
            try io.waitForReadAhead()
            start = next
            chunkNumber += 1
        }
        try io.finishWrites()
    }
}

/// One read-ahead thread and one writer thread; the first error of either is rethrown.
final class BackgroundIO: @unchecked Sendable {
    private let readQueue = DispatchQueue(label: "wsamerge.read")
    private let writeQueue = DispatchQueue(label: "wsamerge.write")
    private let readGroup = DispatchGroup()
    private var pending: [ObjectIdentifier: DispatchGroup] = [:]
    private let lock = DispatchSemaphore(value: 1)
    private var readError: Error?
    private var writeError: Error?

    func readAhead(_ body: @escaping () throws -> Void) {
        readQueue.async(group: readGroup) {
            do { try body() } catch { self.locked { self.readError = error } }
        }
    }

    func waitForReadAhead() throws {
        readGroup.wait()
        if let error = locked({ readError }) { throw error }
    }

    /// Runs `body` holding the lock that guards the shared state.
    private func locked<R>(_ body: () -> R) -> R {
        lock.wait()
        defer { lock.signal() }
        return body()
    }

    /// Queues `body`, which writes from `buffer`; the buffer is busy until it has run.
    func write(_ buffer: RawBuffer, _ body: @escaping () throws -> Void) {
        let group = DispatchGroup()
        locked { pending[ObjectIdentifier(buffer)] = group }
        writeQueue.async(group: group) {
            guard self.locked({ self.writeError }) == nil else { return }
            do { try body() } catch { self.locked { self.writeError = error } }
        }
    }

    /// Waits until no queued write still reads from `buffer`.
    func waitUntilWritable(_ buffer: RawBuffer) throws {
        let group = locked { pending[ObjectIdentifier(buffer)] }
        group?.wait()
        if let error = locked({ writeError }) { throw error }
    }

    func finishWrites() throws {
        writeQueue.sync {}
        if let error = locked({ writeError }) { throw error }
    }

    /// Waits for everything queued (also on an error path, before buffers are freed).
    func drain() {
        readGroup.wait()
        writeQueue.sync {}
    }
}

/// Whether `values` holds a NaN or an infinity (`wsk_nonfinite`).
@inline(__always)
func containsNonFinite(_ values: UnsafePointer<Double>, _ count: Int) -> Bool {
    wsk_nonfinite(values, count) != 0
}
