import Testing
@testable import WSAMergeKit

/// `--max-shard-size` values: powers of 1000, `KiB`-style powers of 1024, or bytes.
@Suite struct SizeTests {
    @Test func parsesSizes() throws {
        #expect(try parseSize("5GB") == 5_000_000_000)
        #expect(try parseSize("500MB") == 500_000_000)
        #expect(try parseSize("1.5GB") == 1_500_000_000)
        #expect(try parseSize("10kB") == 10_000)
        #expect(try parseSize("2KiB") == 2048)
        #expect(try parseSize("1 MiB") == 1_048_576)
        #expect(try parseSize("300") == 300)
        #expect(try parseSize("300B") == 300)
    }

    @Test func refusesNonsense() {
        for bad in ["", "0", "-5MB", "GB", "5XB", "1e30GB", "0.1B", "nanGB", "five"] {
            #expect(throws: WSAMergeError.self, "\(bad)") { try parseSize(bad) }
        }
        #expect((try? parseSize("0")) == nil)
    }

    @Test func outputLayoutFollowsTheName() throws {
        #expect(try OutputOptions.inferred(path: "a.NPZ", maxShardBytes: nil, compress: true, force: false).layout == .npz(compressed: true))
        #expect(try OutputOptions.inferred(path: "a.npy", maxShardBytes: nil, compress: false, force: false).layout == .npy)
        #expect(try OutputOptions.inferred(path: "out/", maxShardBytes: nil, compress: false, force: false).layout
                == .sharded(maxShardBytes: OutputOptions.defaultShardBytes))
        #expect(try OutputOptions.inferred(path: "x", maxShardBytes: 10, compress: false, force: false).layout == .sharded(maxShardBytes: 10))
        #expect(try OutputOptions.inferred(path: "m.safetensors", maxShardBytes: nil, compress: false, force: false).layout == .safetensors)
        #expect(throws: WSAMergeError.self) { try OutputOptions.inferred(path: "m.safetensors", maxShardBytes: nil, compress: true, force: false) }
        #expect(throws: WSAMergeError.self) { try OutputOptions.inferred(path: "m.npz", maxShardBytes: 5, compress: false, force: false) }
    }
}
