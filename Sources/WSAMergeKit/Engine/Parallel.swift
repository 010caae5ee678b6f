import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Fixed work partition shared by every streaming kernel. Tensors are processed in chunks of
/// `chunkElements` and each chunk in blocks of `blockElements`; the partition never depends on
/// the number of threads, and per-block results are folded in block order, so every `--jobs`
/// gives byte-identical results.
public enum Partition {
    /// Elements per block: the unit of exact two-pass statistics and of parallel work.
    public static let blockElements = 4096
    /// Elements read per chunk (128 blocks: fewer places where all the workers meet; 256 was
    /// slower, the chunks of several inputs no longer fitting in cache).
    public static let chunkElements = blockElements * 128
}

/// Runs `body(i)` for every `i` in `0..<count` on up to `jobs` threads. Each worker receives its
/// worker number so it can use its own scratch space. Workers take the next index as they
/// finish one, so a worker the scheduler pauses (the cores also run the writer thread) does not
/// hold the others up; results do not depend on which worker ran an index.
func parallelFor(_ count: Int, jobs: Int, _ body: @Sendable (_ index: Int, _ worker: Int) -> Void) {
    let workers = Swift.max(1, Swift.min(jobs, count))
    if workers == 1 {
        for i in 0..<count { body(i, 0) }
        return
    }
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
        while true {
            let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard i < count else { return }
            body(i, worker)
        }
    }
}

/// `body(i, jobs)` for every item `i`, whole items side by side, each on one lane, largest
/// `sizes` first; the results come back in index order. Whole items side by side keep the cores
/// busy without the hand-offs of splitting each one, and an item's result does not depend on its
/// thread. With one lane (`jobs` 1, a single item, or `serial`: items that cannot be read from
/// two threads, such as members of one libzip archive) items run one at a time in index order,
/// each given all `jobs`, and stop at the first error; with several lanes each item gets
/// `jobs / lanes` (more than 1 when there are fewer items than jobs), and once an item fails the
/// items of higher index that have not started are skipped. Either way the error of the lowest
/// index is rethrown, so errors do not depend on timing.
func parallelMap<T: Sendable>(sizes: [Int], jobs: Int, serial: Bool = false,
                              _ body: @Sendable (_ index: Int, _ jobs: Int) throws -> T) throws -> [T] {
    let count = sizes.count
    let lanes = serial ? 1 : Swift.max(1, Swift.min(jobs, count))
    guard lanes > 1 else { return try (0..<count).map { try body($0, jobs) } }
    let order = sizes.indices.sorted { sizes[$0] > sizes[$1] }
    let perLane = Swift.max(1, jobs / lanes)
    let results = Mutex([Result<T, any Error>?](repeating: nil, count: count))
    let next = Atomic<Int>(0)
    let lowestFailure = Atomic<Int>(Int.max)
    DispatchQueue.concurrentPerform(iterations: lanes) { _ in
        while true {
            let k = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard k < count else { return }
            let i = order[k]
            // An item after a failed one cannot change which error is reported.
            guard i < lowestFailure.load(ordering: .relaxed) else { continue }
            let result = Result { try body(i, perLane) }
            if case .failure = result { lowestFailure.min(i, ordering: .relaxed) }
            results.withLock { $0[i] = result }
        }
    }
    let all = results.withLock { $0 }
    let failed = lowestFailure.load(ordering: .relaxed)
    if failed < count, case .failure(let error) = all[failed]! { throw error }
    return try all.map { try $0!.get() }
}

/// The default `--jobs`: every online core.
public let defaultJobs: Int = {
    #if canImport(Glibc)
    let n = sysconf(Int32(_SC_NPROCESSORS_ONLN))
    return n > 0 ? n : 1
    #else
    return 1
    #endif
}()
