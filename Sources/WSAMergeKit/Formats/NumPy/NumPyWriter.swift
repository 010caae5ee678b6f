import CZip

extension NpyHeader {
    /// numpy's type string for `dtype`, or `nil` when numpy has no such type (BF16, F8, …).
    public static func descr(for dtype: DType) -> String? {
        switch dtype {
        case .BOOL: "|b1"
        case .U8: "|u1"
        case .I8: "|i1"
        case .U16: "<u2"
        case .I16: "<i2"
        case .F16: "<f2"
        case .U32: "<u4"
        case .I32: "<i4"
        case .F32: "<f4"
        case .U64: "<u8"
        case .I64: "<i8"
        case .F64: "<f8"
        case .C64: "<c8"
        default: nil
        }
    }

    /// The header bytes numpy itself writes for a C-order little-endian array: version 1.0
    /// (2.0 when the dict needs more than 65,535 bytes), padded with spaces and ending in a
    /// newline so the data starts at a multiple of 64.
    static func encoded(for tensor: TensorInfo, file: String) throws -> [UInt8] {
        guard let descr = descr(for: tensor.dtype) else {
            let hint = tensor.dtype.isDecodable ? "pass --dtype F32 (or F16/F64)" : "write it as .safetensors or leave it out with --exclude"
            throw WSAMergeError.malformed(file: file, tensor: tensor.name, reason: "numpy cannot represent \(tensor.dtype.rawValue); \(hint)")
        }
        let dims = tensor.shape.map(String.init)
        let shape = dims.count == 1 ? "(\(dims[0]),)" : "(\(dims.joined(separator: ", ")))"
        var dict = Array("{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shape), }".utf8)
        let version2 = dict.count + 1 + 10 > 65535
        let prefix = version2 ? 12 : 10
        while (prefix + dict.count + 1) % 64 != 0 { dict.append(0x20) }
        dict.append(0x0A)
        var bytes = magic + [version2 ? 2 : 1, 0]
        let n = dict.count
        bytes += version2 ? [UInt8(n & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n >> 16 & 0xFF), UInt8(n >> 24 & 0xFF)]
                          : [UInt8(n & 0xFF), UInt8(n >> 8 & 0xFF)]
        return bytes + dict
    }
}

/// Writes one tensor as a `.npy` file.
final class NpyWriter: CheckpointWriter {
    private let output: OutputFile
    private var cursor: WriteCursor

    init(destination: String, tensor: TensorInfo, force: Bool, inputs: Set<FileIdentity>) throws {
        let header = try NpyHeader.encoded(for: tensor, file: destination)
        output = try OutputFile(destination: destination, force: force, inputs: inputs)
        cursor = WriteCursor(tensors: [tensor])
        try output.write(header)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        _ = try cursor.advance(by: bytes.count, file: output.destination)
        try output.write(bytes)
    }

    func finish() throws {
        try cursor.checkComplete(file: output.destination)
        try output.commit()
    }
}

/// Writes a `.npz` archive as `numpy.savez` (stored) or `numpy.savez_compressed` (deflated) do:
/// one `NAME.npy` member per tensor, zip64 records, streamed through zlib with bounded buffers.
///
/// The zip container is written here rather than through libzip so that it streams into the
/// same atomic `OutputFile` as every other format; it is read back through libzip in the tests.
/// Timestamps are fixed (1980-01-01) so identical inputs give identical bytes.
/// A `.npz` archive: one `NAME.npy` member per tensor, stored or deflated (`ZipWriter`).
final class NpzWriter: CheckpointWriter {
    private let zip: ZipWriter
    private let tensors: [TensorInfo]
    private var next = 0
    private var open = false
    private var writtenInMember = 0

    init(destination: String, tensors: [TensorInfo], compressed: Bool, force: Bool, inputs: Set<FileIdentity>) throws {
        try OutputOptions.Layout.npz(compressed: compressed).checkNames(tensors, file: destination)
        zip = ZipWriter(output: try OutputFile(destination: destination, force: force, inputs: inputs), compressed: compressed)
        self.tensors = tensors
        try openMembersUntilDataNeeded()
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard open, writtenInMember + bytes.count <= tensors[next].byteCount else {
            throw WSAMergeError.io(file: zip.output.destination, reason: "internal error: more bytes written than the tensors hold")
        }
        try zip.write(bytes)
        writtenInMember += bytes.count
        if writtenInMember == tensors[next].byteCount {
            try closeMember()
            try openMembersUntilDataNeeded()
        }
    }

    func finish() throws {
        guard next == tensors.count, !open else {
            throw WSAMergeError.io(file: zip.output.destination, reason: "internal error: tensor '\(tensors[min(next, tensors.count - 1)].name)' was not written completely")
        }
        try zip.finish()
    }

    private func openMembersUntilDataNeeded() throws {
        while !open && next < tensors.count {
            let tensor = tensors[next]
            try zip.openMember(Array((tensor.name + ".npy").utf8))
            open = true
            writtenInMember = 0
            let npy = try NpyHeader.encoded(for: tensor, file: zip.output.destination)
            try npy.withUnsafeBytes { raw throws in try zip.write(raw) }
            if tensor.byteCount > 0 { return }
            try closeMember()
        }
    }

    private func closeMember() throws {
        try zip.closeMember()
        open = false
        next += 1
        TestHooks.pause(at: "write")
    }
}
