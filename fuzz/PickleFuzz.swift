// libFuzzer target: the pickle reader on raw bytes (a checkpoint's data.pkl), then the walk that
// turns its values into tensor entries and non-tensor leaves. Any input must parse or be refused
// with an error: never trap, never run out of memory or time.
func fuzzPickle(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let pickle = try? Pickle(bytes: bytes, file: "fuzz.pt") else { return 0 }
    _ = try? TorchCheckpointContents(pickle: pickle, file: "fuzz.pt", rootName: "fuzz")
    return 0
}
