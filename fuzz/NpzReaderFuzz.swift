// libFuzzer target: a whole .npz read through libzip: open the archive, parse every member's
// .npy header, then stream every tensor's data and compute its statistics.
#if canImport(Glibc)
import Glibc
#endif

private let path: String = {
    let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    return "\(dir)/wsamerge-fuzz-\(getpid()).npz"
}()

func fuzzNpzReader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let file = fopen(path, "wb") else { return 0 }
    fwrite(data, 1, size, file)
    fclose(file)
    defer { unlink(path) }
    guard let checkpoint = try? CheckpointReader.open(path) else { return 0 }
    for index in checkpoint.tensors.indices {
        guard let reader = try? checkpoint.reader(for: index) else { continue }
        _ = try? TensorStatistics.compute(reader, jobs: 1)
    }
    return 0
}
