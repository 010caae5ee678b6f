import Synchronization

/// The heap buffers the streaming passes use. Each has one owner and is freed in `deinit`, so no
/// other code allocates or frees raw memory; kernels borrow pointers into them.

/// An owned, aligned byte buffer.
// @unchecked: passes lend its memory to worker threads that touch disjoint ranges of it, and
// the owner reads it only after they are joined.
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

    /// The first `count` bytes (the buffer must hold them).
    func bytes(_ count: Int) -> UnsafeMutablePointer<UInt8> {
        precondition(count <= byteCount)
        return base.bindMemory(to: UInt8.self, capacity: count)
    }

    /// A bitmap held in the buffer (bit j % 8 of byte j / 8) from bit `bit`, a multiple of 8.
    func bits(from bit: Int) -> UnsafeMutablePointer<UInt8> {
        precondition(bit % 8 == 0 && bit / 8 < byteCount)
        return bytes(byteCount) + bit / 8
    }
}

/// Buffers handed back by finished passes, lent again to the next one.
///
/// A merge runs a few passes per tensor, each needing a dozen chunk-sized buffers. Allocated
/// afresh, every one of their pages is faulted in and zeroed by the kernel on first touch, which
/// cost more than a tenth of a merge; recycled, they stay mapped and warm in cache. The cache
/// keeps at most `limit` bytes, so it never holds more than a pass or two needs.
final class BufferCache: Sendable {
    static let shared = BufferCache()

    private struct Idle {
        var buffers: [RawBuffer] = []
        var bytes = 0
    }

    private let idle = Mutex(Idle())
    private let limit = 64 << 20

    /// A buffer of at least `byteCount` bytes: the smallest idle one that fits, or a new one.
    func take(byteCount: Int) -> RawBuffer {
        idle.withLock { idle in
            var best: Int?
            for (i, buffer) in idle.buffers.enumerated() where buffer.byteCount >= byteCount {
                if best == nil || buffer.byteCount < idle.buffers[best!].byteCount { best = i }
            }
            guard let best else { return RawBuffer(byteCount: byteCount) }
            idle.bytes -= idle.buffers[best].byteCount
            return idle.buffers.remove(at: best)
        }
    }

    /// Hands buffers back; those over the limit are freed.
    func give(_ buffers: [RawBuffer]) {
        idle.withLock { idle in
            for buffer in buffers where idle.bytes + buffer.byteCount <= limit {
                idle.buffers.append(buffer)
                idle.bytes += buffer.byteCount
            }
        }
    }
}
