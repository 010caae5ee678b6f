/// The central directory of a zip archive, read straight from the file (no libzip): enough to
/// find where each *stored* (uncompressed) member's bytes are, so a PyTorch checkpoint's storages
/// are plain byte ranges of the file, read with `pread`. ZIP64 archives (over 4 GB, or with more
/// than 65535 members) are supported. Every field is checked against the file's size.
struct StoredZip {
    struct Member {
        let name: String
        /// 0 stored, 8 deflated, …
        let method: Int
        let flags: Int
        let compressedSize: Int
        let size: Int
        let localHeaderOffset: Int
    }

    /// Central directories larger than this are refused (a checkpoint's lists a few entries per tensor).
    static let maxDirectoryBytes = 100_000_000

    let file: ReadableFile
    let members: [Member]

    init(_ file: ReadableFile) throws {
        self.file = file
        let path = file.path
        func malformed(_ reason: String) -> WSAMergeError { .malformed(file: path, reason: "zip archive: \(reason)") }

        // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
        let tailLength = min(file.size, 22 + 0xFFFF)
        let tailStart = file.size - tailLength
        let tail = try file.readBytes(at: tailStart, count: tailLength)
        guard tail.count >= 22,
              let end = stride(from: tail.count - 22, through: 0, by: -1).first(where: {
                  le32(tail, $0) == 0x0605_4B50 && $0 + 22 + le16(tail, $0 + 20) <= tail.count
              }) else {
            throw malformed("no end-of-central-directory record")
        }
        var entries = le16(tail, end + 10)
        var directorySize = le32(tail, end + 12)
        var directoryOffset = le32(tail, end + 16)
        if entries == 0xFFFF || directorySize == 0xFFFF_FFFF || directoryOffset == 0xFFFF_FFFF {
            // ZIP64: a locator just before the record points at the ZIP64 end record.
            guard end >= 20, le32(tail, end - 20) == 0x0706_4B50 else { throw malformed("ZIP64 locator is missing") }
            let recordOffset = le64(tail, end - 20 + 8)
            guard recordOffset >= 0, recordOffset <= file.size - 56 else { throw malformed("ZIP64 end record is outside the file") }
            let record = try file.readBytes(at: recordOffset, count: 56)
            guard le32(record, 0) == 0x0606_4B50 else { throw malformed("ZIP64 end record has a bad signature") }
            entries = le64(record, 32)
            directorySize = le64(record, 40)
            directoryOffset = le64(record, 48)
        }
        guard directorySize >= 0, directoryOffset >= 0, directorySize <= Self.maxDirectoryBytes,
              directoryOffset <= file.size, directorySize <= file.size - directoryOffset else {
            throw malformed("central directory (\(directorySize) bytes at \(directoryOffset)) is outside the file or too large")
        }
        guard entries >= 0, entries <= directorySize / 46 else {
            throw malformed("\(entries) entries cannot fit a central directory of \(directorySize) bytes")
        }
        let directory = try file.readBytes(at: directoryOffset, count: directorySize)
        var members: [Member] = []
        members.reserveCapacity(entries)
        var at = 0
        for i in 0..<entries {
            guard at + 46 <= directory.count, le32(directory, at) == 0x0201_4B50 else {
                throw malformed("central directory entry \(i) is truncated or has a bad signature")
            }
            let flags = le16(directory, at + 8), method = le16(directory, at + 10)
            var compressed = le32(directory, at + 20), size = le32(directory, at + 24)
            let nameLength = le16(directory, at + 28), extraLength = le16(directory, at + 30), commentLength = le16(directory, at + 32)
            var local = le32(directory, at + 42)
            let nameStart = at + 46, extraStart = nameStart + nameLength, next = extraStart + extraLength + commentLength
            guard next <= directory.count else { throw malformed("central directory entry \(i) runs past the directory") }
            guard let name = String(validatingUTF8Bytes: directory[nameStart..<extraStart]) else {
                throw malformed("member \(i) has a name that is not UTF-8")
            }
            // The ZIP64 extra field holds, in this order, whichever of the three was 0xFFFFFFFF.
            var e = extraStart
            while e + 4 <= extraStart + extraLength {
                let id = le16(directory, e), length = le16(directory, e + 2)
                guard e + 4 + length <= extraStart + extraLength else { throw malformed("member '\(printable(name))' has a truncated extra field") }
                if id == 0x0001 {
                    var f = e + 4
                    for field in [0, 1, 2] {
                        let needed = [size, compressed, local][field] == 0xFFFF_FFFF
                        guard needed else { continue }
                        guard f + 8 <= e + 4 + length else { throw malformed("member '\(printable(name))' has a truncated ZIP64 field") }
                        let value = le64(directory, f)
                        switch field { case 0: size = value; case 1: compressed = value; default: local = value }
                        f += 8
                    }
                }
                e += 4 + length
            }
            guard size >= 0, compressed >= 0, local >= 0, local < file.size else {
                throw malformed("member '\(printable(name))' has sizes or an offset outside the file")
            }
            members.append(Member(name: name, method: method, flags: flags, compressedSize: compressed, size: size, localHeaderOffset: local))
            at = next
        }
        self.members = members
    }

    /// Where `member`'s bytes start, from its local header; refuses compressed or encrypted
    /// members and data that runs past the file.
    func dataOffset(of member: Member) throws -> Int {
        let path = file.path
        guard member.method == 0 else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(printable(member.name))' is compressed (method \(member.method)); torch.save stores members uncompressed, so re-save it with torch.save")
        }
        guard member.flags & 1 == 0 else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(printable(member.name))' is encrypted")
        }
        guard member.compressedSize == member.size else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(printable(member.name))' is stored but its sizes differ")
        }
        guard member.localHeaderOffset <= file.size - 30 else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(printable(member.name))' has its local header outside the file")
        }
        let header = try file.readBytes(at: member.localHeaderOffset, count: 30)
        guard le32(header, 0) == 0x0403_4B50 else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(printable(member.name))' has a bad local header signature")
        }
        let start = member.localHeaderOffset + 30 + le16(header, 26) + le16(header, 28)
        guard start <= file.size, member.size <= file.size - start else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(printable(member.name))' (\(member.size) bytes) runs past the end of the file")
        }
        return start
    }

    /// The whole of a small stored member.
    func read(_ member: Member, limit: Int) throws -> [UInt8] {
        guard member.size <= limit else {
            throw WSAMergeError.malformed(file: file.path, reason: "zip member '\(printable(member.name))' is larger than \(limit) bytes")
        }
        return try file.readBytes(at: try dataOffset(of: member), count: member.size)
    }
}

private func le16(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) | Int(b[at + 1]) << 8 }
private func le32(_ b: [UInt8], _ at: Int) -> Int { le16(b, at) | le16(b, at + 2) << 16 }
/// A little-endian 64-bit field; values over Int.max come back negative (callers refuse them).
private func le64(_ b: [UInt8], _ at: Int) -> Int { Int(bitPattern: UInt(le32(b, at)) | UInt(le32(b, at + 4)) << 32) }
