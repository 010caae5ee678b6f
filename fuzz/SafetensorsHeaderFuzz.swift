// libFuzzer target: the safetensors header parser (length prefix, JSON, validation) on
// arbitrary bytes. Built by `make fuzz` with `swiftc -sanitize=fuzzer,address`.

func fuzzSafetensorsHeader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let length = try? SafetensorsHeader.headerLength(prefix: Array(bytes.prefix(8)), fileSize: size, file: "fuzz") else {
        return 0
    }
    let json = bytes[8..<(8 + length)]
    _ = try? json.withUnsafeBytes { raw in
        try SafetensorsHeader(json: raw, bufferSize: size - 8 - length, file: "fuzz")
    }
    return 0
}
