/// Opens `.npy` arrays and `.npz` archives as checkpoints.
enum NumPyReader {
    /// One `.npy` file: a checkpoint with one tensor named after the file's stem.
    static func openNpy(_ file: ReadableFile) throws -> Checkpoint {
        let prefix = try file.readBytes(at: 0, count: min(NpyHeader.prefixLength, file.size))
        let (_, offset) = try NpyHeader.dataOffset(prefix: prefix, file: file.path)
        guard offset <= file.size else {
            throw WSAMergeError.malformed(file: file.path, reason: ".npy header is truncated (file has \(file.size) bytes, header needs \(offset))")
        }
        let header = try NpyHeader(bytes: try file.readBytes(at: 0, count: offset), file: file.path)
        // The file's stem: its name without the last extension.
        var name = baseName(of: file.path)
        if let dot = name.lastIndex(of: "."), dot != name.startIndex { name = String(name[..<dot]) }
        let info = try TensorInfo(name: name, dtype: header.dtype, shape: header.shape, file: file.path)
        guard file.size - offset >= info.byteCount else {
            throw WSAMergeError.malformed(file: file.path, tensor: name,
                             reason: "data is truncated: \(file.size - offset) bytes present, shape \(info.shape) needs \(info.byteCount)")
        }
        let stored = FileSlice(tensor: info, file: file, offset: offset, bigEndian: header.bigEndian)
        return Checkpoint(path: file.path, format: .npy, metadata: [:], sources: [inCOrder(stored, header)], files: [file])
    }

    /// Whether a zip archive is a `.npz`: it holds `.npy` members (an empty archive is an empty `.npz`).
    static func isNpz(_ archive: ZipArchive) -> Bool {
        archive.members.isEmpty || archive.members.contains { $0.name.hasSuffix(".npy") }
    }

    /// A `.npz` archive: every member `NAME.npy` becomes tensor `NAME`, in archive order.
    static func openNpz(_ file: ReadableFile, archive: ZipArchive) throws -> Checkpoint {
        var sources: [any TensorSource] = []
        var seen = Set<ByteKey>()  // byte-wise, as zip readers compare names
        var totalBytes = 0
        for member in archive.members {
            guard member.name.hasSuffix(".npy") else {
                throw WSAMergeError.malformed(file: file.path, reason: "archive member '\(member.name)' is not a .npy array")
            }
            let name = String(member.name.dropLast(4))
            guard seen.insert(ByteKey(name)).inserted else {
                throw WSAMergeError.malformed(file: file.path, tensor: name, reason: "duplicate array name in the archive")
            }
            let memberFile = "\(file.path)[\(member.name)]"
            let prefix = try archive.readPrefix(index: member.index, count: NpyHeader.prefixLength)
            let (_, offset) = try NpyHeader.dataOffset(prefix: prefix, file: memberFile)
            guard offset <= member.size else {
                throw WSAMergeError.malformed(file: memberFile, reason: ".npy header is truncated")
            }
            let header = try NpyHeader(bytes: try archive.readPrefix(index: member.index, count: offset), file: memberFile)
            let info = try TensorInfo(name: name, dtype: header.dtype, shape: header.shape, file: file.path)
            guard member.size - offset == info.byteCount else {
                throw WSAMergeError.malformed(file: file.path, tensor: name,
                                 reason: "member holds \(member.size - offset) data bytes but its header declares \(info.byteCount)")
            }
            let (sum, overflow) = totalBytes.addingReportingOverflow(info.byteCount)
            guard !overflow else {
                throw WSAMergeError.malformed(file: file.path, tensor: name, reason: "the archive's arrays add up to more bytes than can be addressed")
            }
            totalBytes = sum
            let stored = ZipMember(tensor: info, archive: archive, index: member.index, skip: offset, bigEndian: header.bigEndian)
            sources.append(inCOrder(stored, header))
        }
        return Checkpoint(path: file.path, format: .npz, metadata: [:], sources: sources, files: [file])
    }

    /// `stored`, served in C order when the header says it is in Fortran order.
    private static func inCOrder(_ stored: any TensorSource, _ header: NpyHeader) -> any TensorSource {
        header.fortranOrder && stored.tensor.shape.count > 1 && stored.tensor.byteCount > 0 ? FortranOrder(stored) : stored
    }
}
