/// Streams several same-shaped tensors side by side: each chunk of every input is read, then
/// the chunk's blocks are decoded to float64 and handed to a kernel in parallel; the kernel's
/// output block (if any) is rounded once to the output dtype and written in order.
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
    typealias Kernel<T> = (_ inputs: [UnsafeMutablePointer<Double>], _ count: Int, _ output: UnsafeMutablePointer<Double>) -> T

    static func run<T>(_ readers: [TensorReader], jobs: Int, output: Output?, kernel: @escaping Kernel<T>,
                       fold: ([T]) throws -> Void) throws {
        let count = readers[0].tensor.elementCount
        precondition(readers.allSatisfy { $0.tensor.elementCount == count })
        guard count > 0 else { return }
        let block = Partition.blockElements
        let chunk = Swift.min(Partition.chunkElements, count)
        let widths = readers.map { $0.tensor.dtype.byteWidth! }
        let raws = widths.map { UnsafeMutableRawBufferPointer.allocate(byteCount: chunk * $0, alignment: 64) }
        let outWidth = output?.dtype.byteWidth ?? 0
        let encoded = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(1, chunk * outWidth), alignment: 64)
        defer {
            for r in raws { r.deallocate() }
            encoded.deallocate()
        }
        let workers = Swift.max(1, jobs)
        // Per worker: one scratch block per input plus one for the output.
        let scratch = ScratchPool(workers: workers * (readers.count + 1), capacity: block)
        let dtypes = readers.map(\.tensor.dtype)
        var remaining = count
        while remaining > 0 {
            let n = Swift.min(remaining, chunk)
            for (reader, (raw, width)) in zip(readers, zip(raws, widths)) {
                try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<n * width]))
            }
            let blocks = (n + block - 1) / block
            var results = [T?](repeating: nil, count: blocks)
            results.withUnsafeMutableBufferPointer { out in
                parallelFor(blocks, jobs: workers) { b, worker in
                    let start = b * block
                    let m = Swift.min(block, n - start)
                    let base = worker * (dtypes.count + 1)
                    var inputs: [UnsafeMutablePointer<Double>] = []
                    inputs.reserveCapacity(dtypes.count)
                    for k in 0..<dtypes.count {
                        let values = scratch.buffer(base + k)
                        dtypes[k].decode(raws[k].baseAddress! + start * widths[k], count: m, into: values)
                        inputs.append(values)
                    }
                    let values = scratch.buffer(base + dtypes.count)
                    out[b] = kernel(inputs, m, values)
                    if let output {
                        output.dtype.encode(values, count: m, into: encoded.baseAddress! + start * outWidth)
                    }
                }
            }
            if let output {
                try output.writer.write(UnsafeRawBufferPointer(rebasing: encoded[0..<n * outWidth]))
            }
            try fold(results.map { $0! })
            remaining -= n
        }
    }
}

/// Whether `values` holds a NaN or an infinity.
@inline(__always)
func containsNonFinite(_ values: UnsafePointer<Double>, _ count: Int) -> Bool {
    var sum = 0.0
    for i in 0..<count { sum += values[i] * 0 }  // 0·x is NaN exactly when x is not finite
    return sum.isNaN
}
