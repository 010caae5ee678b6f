import Foundation
import Testing
@testable import WSAMergeKit

/// `Lockstep` streams several tensors side by side: values arrive in order, blocks fold in order,
/// and the result does not depend on the number of workers.
@Suite struct LockstepTests {
    /// A checkpoint of F64 tensors `a` and `b` holding `values(i)`, written as safetensors.
    func checkpoint(count: Int, _ values: (Int) -> (Double, Double)) throws -> Checkpoint {
        var a: [UInt8] = [], b: [UInt8] = []
        for i in 0..<count {
            let (x, y) = values(i)
            a += Bytes.le(x)
            b += Bytes.le(y)
        }
        let header = #"{"a":{"dtype":"F64","shape":[\#(count)],"data_offsets":[0,\#(a.count)]},"#
            + #""b":{"dtype":"F64","shape":[\#(count)],"data_offsets":[\#(a.count),\#(a.count + b.count)]}}"#
        let path = try Bytes.temporaryFile(Bytes.safetensors(header, data: a + b), name: "m.safetensors")
        return try CheckpointReader.open(path)
    }

    @Test(arguments: [1, 2, 7])
    func blocksArriveInOrderForAnyJobs(jobs: Int) throws {
        // Several chunks' worth of elements, not a multiple of the block size.
        let count = Partition.chunkElements * 2 + 1234
        let model = try checkpoint(count: count) { (Double($0), Double(-$0)) }
        defer { Bytes.removeDirectory(of: model.path) }
        var firsts: [Double] = []
        var sums = 0.0
        try Lockstep.run([try model.reader(for: 0), try model.reader(for: 1)], jobs: jobs, output: nil, kernel: { inputs, count, _ in
            (first: inputs[0][0], sum: (0..<count).reduce(0.0) { $0 + inputs[0][$1] + inputs[1][$1] })
        }, fold: { blocks in
            firsts += blocks.map(\.first)
            sums += blocks.reduce(0) { $0 + $1.sum }
        })
        let blocks = (count + Partition.blockElements - 1) / Partition.blockElements
        #expect(firsts == (0..<blocks).map { Double($0 * Partition.blockElements) })
        #expect(sums == 0)
    }

    @Test func momentsAreIdenticalForAnyJobs() throws {
        let count = Partition.chunkElements + 999
        let model = try checkpoint(count: count) { i in (sin(Double(i)) * 1e3 + 1e6, cos(Double(i))) }
        defer { Bytes.removeDirectory(of: model.path) }
        let one = try TensorStatistics.compute(try model.reader(for: 0), jobs: 1).moments
        for jobs in [2, 3, 8] {
            #expect(try TensorStatistics.compute(try model.reader(for: 0), jobs: jobs).moments == one)
        }
    }
}

/// `parallelMap`: results in index order whatever the order items start in or the number of
/// lanes, and the error of the lowest index wins (one lane stops there; several skip the items
/// after a failure that have not started).
@Suite struct ParallelMapTests {
    struct Failure: Error, Equatable { let index: Int }

    @Test(arguments: [1, 2, 5])
    func resultsInIndexOrder(jobs: Int) throws {
        // Ascending sizes: the last item starts first.
        #expect(try parallelMap(sizes: Array(0..<50), jobs: jobs) { i, _ in i * i } == (0..<50).map { $0 * $0 })
    }

    @Test(arguments: [1, 2, 5])
    func lowestFailingIndexWins(jobs: Int) {
        let ran = Counter()
        do {
            _ = try parallelMap(sizes: Array(0..<40), jobs: jobs) { i, _ -> Int in
                ran.increment()
                if i == 7 || i == 31 { throw Failure(index: i) }
                return i
            }
            Issue.record("no error")
        } catch {
            #expect(error as? Failure == Failure(index: 7))
        }
        #expect(ran.value == (jobs == 1 ? 8 : 40))
    }

    /// Item 7 runs first (the largest) and fails at once; items 0…6 come next and must still run
    /// (a lower index could fail too), taking 20 ms each; by then the failure is recorded, so
    /// items 8…39 are skipped, and 7's error is the one reported.
    @Test func itemsAfterAFailureAreSkipped() {
        let ran = Counter()
        let sizes = (0..<40).map { $0 == 7 ? 100 : $0 < 7 ? 50 : 1 }
        do {
            _ = try parallelMap(sizes: sizes, jobs: 2) { i, _ -> Int in
                ran.increment()
                if i == 7 { throw Failure(index: i) }
                Thread.sleep(forTimeInterval: 0.02)
                return i
            }
            Issue.record("no error")
        } catch {
            #expect(error as? Failure == Failure(index: 7))
        }
        #expect(ran.value == 8)
    }

    /// Fewer items than jobs: each lane gets its share of the jobs.
    @Test func lanesShareTheJobs() throws {
        #expect(try parallelMap(sizes: [5, 9], jobs: 8) { _, jobs in jobs } == [4, 4])
        #expect(try parallelMap(sizes: [5, 9, 1], jobs: 7) { _, jobs in jobs } == [2, 2, 2])
        #expect(try parallelMap(sizes: [5, 9, 1], jobs: 2) { _, jobs in jobs } == [1, 1, 1])
        #expect(try parallelMap(sizes: [5, 9], jobs: 8, serial: true) { _, jobs in jobs } == [8, 8])
    }

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var count = 0
        func increment() { lock.lock(); count += 1; lock.unlock() }
        var value: Int { lock.lock(); defer { lock.unlock() }; return count }
    }
}
