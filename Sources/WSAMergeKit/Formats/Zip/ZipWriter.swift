import CZip

/// Writes a zip archive member by member into an `OutputFile`: local headers with ZIP64 sizes
/// (patched when a member is closed), stored or raw-deflated data with its CRC-32, then the
/// central directory and the ZIP64 end records. Members stream: only one is open at a time.
final class ZipWriter {
    private struct Entry {
        let name: [UInt8]
        let headerOffset: Int
        var crc: UInt32 = 0
        var compressedSize = 0
        var size = 0
    }

    let output: OutputFile
    private let compressed: Bool
    private var entries: [Entry] = []
    private var deflater = z_stream()
    private var deflaterReady = false
    private var outBuffer = [UInt8](repeating: 0, count: 1 << 18)

    init(output: OutputFile, compressed: Bool) {
        self.output = output
        self.compressed = compressed
    }

    deinit { if deflaterReady { deflateEnd(&deflater) } }

    /// Starts member `name` (UTF-8 bytes).
    func openMember(_ name: [UInt8]) throws {
        let entry = Entry(name: name, headerOffset: output.offset)
        var header = ZipBytes()
        header.u32(0x0403_4B50)
        header.u16(45)  // version needed: zip64
        header.u16(flags(for: name))
        header.u16(compressed ? 8 : 0)
        header.u16(0)  // time 00:00
        header.u16(0x21)  // date 1980-01-01
        header.u32(0)  // crc, patched
        header.u32(0xFFFF_FFFF)
        header.u32(0xFFFF_FFFF)
        header.u16(name.count)
        header.u16(20)
        header.bytes += name
        header.u16(0x0001)  // zip64 extra: sizes, patched
        header.u16(16)
        header.u64(0)
        header.u64(0)
        try output.write(header.bytes)
        entries.append(entry)
        if compressed {
            deflater = z_stream()
            guard deflateInit2_(&deflater, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                                Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                throw WSAMergeError.io(file: output.destination, reason: "zlib deflateInit failed")
            }
            deflaterReady = true
        }
    }

    /// Adds data to the open member.
    func write(_ bytes: UnsafeRawBufferPointer) throws { try feed(bytes) }

    /// Adds member data: CRC over the plain bytes, then stored or deflated output.
    private func feed(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count > 0 else { return }
        let last = entries.count - 1
        var offset = 0
        while offset < bytes.count {
            let n = min(bytes.count - offset, Int(UInt32.max >> 1))
            entries[last].crc = UInt32(crc32(UInt(entries[last].crc), bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset, UInt32(n)))
            offset += n
        }
        entries[last].size += bytes.count
        if compressed {
            try deflate(bytes, finish: false)
        } else {
            try output.write(bytes)
            entries[last].compressedSize += bytes.count
        }
    }

    private func deflate(_ bytes: UnsafeRawBufferPointer, finish: Bool) throws {
        let last = entries.count - 1
        var remaining = bytes
        repeat {
            let chunk = min(remaining.count, Int(UInt32.max >> 1))
            deflater.next_in = UnsafeMutablePointer(mutating: remaining.baseAddress?.assumingMemoryBound(to: UInt8.self))
            deflater.avail_in = UInt32(chunk)
            let flush = finish && chunk == remaining.count ? Z_FINISH : Z_NO_FLUSH
            var status: Int32 = Z_OK
            repeat {
                let produced: Int = outBuffer.withUnsafeMutableBufferPointer { out in
                    deflater.next_out = out.baseAddress
                    deflater.avail_out = UInt32(out.count)
                    status = CZip.deflate(&deflater, flush)
                    return out.count - Int(deflater.avail_out)
                }
                guard status != Z_STREAM_ERROR else { throw WSAMergeError.io(file: output.destination, reason: "zlib deflate failed") }
                if produced > 0 {
                    try outBuffer.withUnsafeBytes { raw throws in try output.write(UnsafeRawBufferPointer(rebasing: raw[0..<produced])) }
                    entries[last].compressedSize += produced
                }
            } while deflater.avail_out == 0 || (flush == Z_FINISH && status != Z_STREAM_END)
            remaining = chunk < remaining.count ? UnsafeRawBufferPointer(rebasing: remaining[chunk...]) : UnsafeRawBufferPointer(start: nil, count: 0)
        } while remaining.count > 0
    }

    /// Finishes the open member: the deflate stream's end, then its CRC and sizes patched in.
    func closeMember() throws {
        if compressed {
            try deflate(UnsafeRawBufferPointer(start: nil, count: 0), finish: true)
            deflateEnd(&deflater)
            deflaterReady = false
        }
        let entry = entries[entries.count - 1]
        var crc = ZipBytes()
        crc.u32(entry.crc)
        try output.patch(crc.bytes, at: entry.headerOffset + 14)
        var sizes = ZipBytes()
        sizes.u64(UInt64(entry.size))
        sizes.u64(UInt64(entry.compressedSize))
        try output.patch(sizes.bytes, at: entry.headerOffset + 30 + entry.name.count + 4)
    }

    private func flags(for name: [UInt8]) -> Int {
        name.allSatisfy { $0 < 0x80 } ? 0 : 0x0800  // bit 11: UTF-8 names
    }

    /// Writes the central directory and puts the archive in place.
    func finish() throws {
        try writeCentralDirectory()
        try output.commit()
    }

    private func writeCentralDirectory() throws {
        let start = output.offset
        var directory = ZipBytes()
        for entry in entries {
            directory.u32(0x0201_4B50)
            directory.u16(45 | 3 << 8)  // made by: zip64, Unix
            directory.u16(45)
            directory.u16(flags(for: entry.name))
            directory.u16(compressed ? 8 : 0)
            directory.u16(0)
            directory.u16(0x21)
            directory.u32(entry.crc)
            directory.u32(0xFFFF_FFFF)
            directory.u32(0xFFFF_FFFF)
            directory.u16(entry.name.count)
            directory.u16(28)
            directory.u16(0)  // comment
            directory.u16(0)  // disk
            directory.u16(0)  // internal attributes
            directory.u32(0o100644 << 16)  // external attributes: regular file, rw-r--r--
            directory.u32(0xFFFF_FFFF)
            directory.bytes += entry.name
            directory.u16(0x0001)
            directory.u16(24)
            directory.u64(UInt64(entry.size))
            directory.u64(UInt64(entry.compressedSize))
            directory.u64(UInt64(entry.headerOffset))
        }
        let size = directory.bytes.count
        let zip64End = start + size
        directory.u32(0x0606_4B50)  // zip64 end of central directory
        directory.u64(44)
        directory.u16(45)
        directory.u16(45)
        directory.u32(0)
        directory.u32(0)
        directory.u64(UInt64(entries.count))
        directory.u64(UInt64(entries.count))
        directory.u64(UInt64(size))
        directory.u64(UInt64(start))
        directory.u32(0x0706_4B50)  // zip64 locator
        directory.u32(0)
        directory.u64(UInt64(zip64End))
        directory.u32(1)
        directory.u32(0x0605_4B50)  // end of central directory
        directory.u16(0)
        directory.u16(0)
        directory.u16(min(entries.count, 0xFFFF))
        directory.u16(min(entries.count, 0xFFFF))
        directory.u32(min(size, 0xFFFF_FFFF))
        directory.u32(min(start, 0xFFFF_FFFF))
        directory.u16(0)
        try output.write(directory.bytes)
    }
}

/// Little-endian field writer for zip records.
struct ZipBytes {
    var bytes: [UInt8] = []
    mutating func u16(_ v: Int) { bytes += [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
    mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(v >> (8 * UInt32(i)) & 0xFF)) } }
    mutating func u32(_ v: Int) { u32(UInt32(truncatingIfNeeded: v)) }
    mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(v >> (8 * UInt64(i)) & 0xFF)) } }
}
