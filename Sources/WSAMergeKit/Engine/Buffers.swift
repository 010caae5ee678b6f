/// The heap buffers the streaming passes use. Each has one owner and is freed in `deinit`, so no
/// other code allocates or frees raw memory; kernels borrow pointers into them.

/// An owned, aligned byte buffer.
final class RawBuffer: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let byteCount: Int

    init(byteCount: Int) {
        self.byteCount = Swift.max(1, byteCount)
        base = .allocate(byteCount: self.byteCount, alignment: 64)
    }

    deinit { base.deallocate() }

    func prefix(_ n: Int) -> UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: n) }

    /// The first `count` doubles (the buffer must hold them).
    func doubles(_ count: Int) -> UnsafeMutablePointer<Double> {
        precondition(count * 8 <= byteCount)
        return base.bindMemory(to: Double.self, capacity: count)
    }
}

/// Per-worker reusable buffers of doubles.
final class ScratchPool: @unchecked Sendable {
    private let buffers: [UnsafeMutablePointer<Double>]
    init(workers: Int, capacity: Int) {
        buffers = (0..<Swift.max(1, workers)).map { _ in
            UnsafeMutablePointer<Double>.allocate(capacity: capacity)  // scratch: written before read
        }
    }

    deinit { for p in buffers { p.deallocate() } }

    func buffer(_ worker: Int) -> UnsafeMutablePointer<Double> { buffers[worker] }
}
