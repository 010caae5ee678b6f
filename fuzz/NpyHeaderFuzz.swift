// libFuzzer target: the .npy header parser (magic, version, Python dict literal, descr).

func fuzzNpyHeader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = try? NpyHeader(bytes: bytes, file: "fuzz")
    return 0
}
