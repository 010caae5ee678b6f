import Dispatch

/// The heap buffers the streaming passes use. Each has one owner and is freed in `deinit`, so no
/// other code allocates or frees raw memory; kernels borrow pointers into them.

/// An owned, aligned byte buffer.
final class RawBuffer: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let byteCount: Int

    init(byteCount: Int, alignment: Int = 64) {
        self.byteCount = Swift.max(1, byteCount)
        base = .allocate(byteCount: self.byteCount, alignment: alignment)
    }

    deinit { base.deallocate() }

    func prefix(_ n: Int) -> UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: n) }

    /// The first `count` doubles (the buffer must hold them).
    func doubles(_ count: Int) -> UnsafeMutablePointer<Double> {
        precondition(count * 8 <= byteCount)
        return base.bindMemory(to: Double.self, capacity: count)
    }
}

/// Buffers handed back by finished passes, lent again to the next one.
///
/// A merge runs a few passes per tensor, each needing a dozen chunk-sized buffers. Allocated
/// afresh, every one of their pages is faulted in and zeroed by the kernel on first touch, which
/// cost more than a tenth of a merge; recycled, they stay mapped and warm in cache. The cache
/// keeps at most `limit` bytes, so it never holds more than a pass or two needs.
final class BufferCache: @unchecked Sendable {
    static let shared = BufferCache()

    private var idle: [RawBuffer] = []
    private var idleBytes = 0
    private let limit = 64 << 20
    private let lock = DispatchSemaphore(value: 1)

    /// A buffer of at least `byteCount` bytes: the smallest idle one that fits, or a new one.
    func take(byteCount: Int) -> RawBuffer {
        lock.wait()
        defer { lock.signal() }
        var best: Int?
        for (i, buffer) in idle.enumerated() where buffer.byteCount >= byteCount {
            if best == nil || buffer.byteCount < idle[best!].byteCount { best = i }
        }
        guard let best else { return RawBuffer(byteCount: byteCount) }
        idleBytes -= idle[best].byteCount
        return idle.remove(at: best)
    }

    /// Hands buffers back; those over the limit are freed.
    func give(_ buffers: [RawBuffer]) {
        lock.wait()
        defer { lock.signal() }
        for buffer in buffers where idleBytes + buffer.byteCount <= limit {
            idle.append(buffer)
            idleBytes += buffer.byteCount
        }
    }
}
