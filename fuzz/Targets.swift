// The fuzz binary's one libFuzzer entry point. Every target (fuzz/<Target>.swift) is linked into
// one binary, built once with the library; WSAMERGE_FUZZ_TARGET names the one a run exercises.
#if canImport(Glibc)
import Glibc
#endif

private let targets: [String: @Sendable (UnsafePointer<UInt8>, Int) -> CInt] = [
    "SafetensorsHeaderFuzz": fuzzSafetensorsHeader,
    "NpyHeaderFuzz": fuzzNpyHeader,
    "NpzReaderFuzz": fuzzNpzReader,
    "PickleFuzz": fuzzPickle,
    "JSONReaderFuzz": fuzzJSONReader,
]

private let target: @Sendable (UnsafePointer<UInt8>, Int) -> CInt = {
    let name = getenv("WSAMERGE_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let target = targets[name] else {
        fputs("WSAMERGE_FUZZ_TARGET='\(name)': expected one of \(targets.keys.sorted().joined(separator: ", "))\n", stderr)
        exit(64)
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    target(data, size)
}
