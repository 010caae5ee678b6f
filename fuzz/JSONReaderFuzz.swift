// libFuzzer target: the JSON pull reader against the tree parser (they must accept the same
// texts), the --target-scope reader on the same bytes, and the safetensors writer's header for
// a tensor named by the input: whatever name checkNames lets through must read back, byte for
// byte, through the header parser (nothing is written that a reader cannot read back).
#if canImport(Glibc)
import Glibc
#endif

private let path: String = {
    let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    return "\(dir)/wsamerge-fuzz-\(getpid()).json"
}()

func fuzzJSONReader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let raw = UnsafeRawBufferPointer(start: data, count: size)
    let tree = try? JSON.parse(raw)
    var reader = JSONReader(raw)
    var skipped = true
    do {
        try reader.skipValue()
        try reader.finish()
    } catch {
        skipped = false
    }
    precondition((tree != nil) == skipped, "JSON.parse and JSONReader disagree")

    if let file = fopen(path, "wb") {
        fwrite(data, 1, size, file)
        fclose(file)
        _ = try? TargetScope(path: path)
        unlink(path)
    }

    let name = String(decoding: raw, as: UTF8.self)
    if let tensor = try? TensorInfo(name: name, dtype: .F32, shape: [1], file: "fuzz"),
       (try? OutputOptions.Layout.safetensors.checkNames([tensor], file: "fuzz")) != nil {
        let header = SafetensorsWriter.header(tensors: [tensor], metadata: ["k": name])
        let parsed = header.dropFirst(8).withUnsafeBytes { json in
            try? SafetensorsHeader(json: json, bufferSize: 4, file: "fuzz")
        }
        precondition(parsed?.entries.first?.info.name.utf8.elementsEqual(name.utf8) == true, "a written name does not read back")
        precondition(parsed?.metadata["k"].map { $0.utf8.elementsEqual(name.utf8) } == true, "written metadata does not read back")
    }
    return 0
}
