#if canImport(Glibc)
import Glibc
#endif
import CZip

/// A zip archive opened read-only through libzip (with its consistency checks on), listing its
/// members and streaming one member at a time in bounded reads.
final class ZipArchive: @unchecked Sendable {
    struct Member {
        let index: Int
        let name: String
        /// Uncompressed size the archive declares.
        let size: Int
    }

    let path: String
    let members: [Member]
    private let archive: OpaquePointer

    init(path: String) throws {
        self.path = path
        var code: Int32 = 0
        guard let archive = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &code) else {
            if code == ZIP_ER_EXISTS {
                throw WSAMergeError.malformed(file: path, reason: "the archive holds two members of the same name (numpy would silently read only one of them)")
            }
            throw WSAMergeError.malformed(file: path, reason: "not a readable zip archive: \(ZipArchive.describe(code: code))")
        }
        self.archive = archive
        let count = zip_get_num_entries(archive, 0)
        var members: [Member] = []
        for i in 0..<max(0, Int(count)) {
            var info = zip_stat_t()
            zip_stat_init(&info)
            guard zip_stat_index(archive, zip_uint64_t(i), 0, &info) == 0, let cname = info.name else {
                zip_discard(archive)
                throw WSAMergeError.malformed(file: path, reason: "zip member \(i) cannot be read: \(ZipArchive.lastError(archive))")
            }
            let name = String(decoding: UnsafeRawBufferPointer(start: cname, count: strlen(cname)), as: UTF8.self)
            guard info.valid & zip_uint64_t(ZIP_STAT_SIZE) != 0, let size = Int(exactly: info.size) else {
                zip_discard(archive)
                throw WSAMergeError.malformed(file: path, reason: "zip member '\(name)' has no valid size")
            }
            members.append(Member(index: i, name: name, size: size))
        }
        self.members = members
    }

    deinit { zip_discard(archive) }

    /// Opens member `index`, discards its first `skip` bytes and yields at most `limit` more.
    func openMember(index: Int, skip: Int, limit: Int) throws -> ZipMemberStream {
        let member = members[index]
        guard let file = zip_fopen_index(archive, zip_uint64_t(index), 0) else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(member.name)' cannot be opened: \(ZipArchive.lastError(archive))")
        }
        var stream = ZipMemberStream(owner: ZipFileHandle(file), archive: self, member: member, remaining: skip + limit,
                                     readsToEnd: skip + limit == member.size)
        if skip > 0 {
            var discard = [UInt8](repeating: 0, count: skip)
            try discard.withUnsafeMutableBytes { buffer throws in try stream.read(into: buffer) }
        }
        return stream
    }

    /// Reads the first `count` bytes (at most) of member `index`.
    func readPrefix(index: Int, count: Int) throws -> [UInt8] {
        let n = min(count, members[index].size)
        var stream = try openMember(index: index, skip: 0, limit: n)
        var bytes = [UInt8](repeating: 0, count: n)
        try bytes.withUnsafeMutableBytes { buffer throws in try stream.read(into: buffer) }
        return bytes
    }

    static func describe(code: Int32) -> String {
        var error = zip_error_t()
        zip_error_init_with_code(&error, code)
        defer { zip_error_fini(&error) }
        return String(cString: zip_error_strerror(&error))
    }

    static func lastError(_ archive: OpaquePointer) -> String {
        String(cString: zip_strerror(archive))
    }

    fileprivate func error(_ file: OpaquePointer) -> String {
        String(cString: zip_file_strerror(file))
    }
}

/// Owns a libzip member handle.
final class ZipFileHandle {
    let file: OpaquePointer
    init(_ file: OpaquePointer) { self.file = file }
    deinit { zip_fclose(file) }
}

/// Consecutive bytes of one zip member, inflated in bounded reads straight into the caller's
/// buffer; never more than the `remaining` bytes it was opened for. A stream that covers the
/// whole member checks, after its last byte, that the member ends there and that its CRC-32
/// matches (libzip verifies it only when a read reaches the end of the member).
struct ZipMemberStream: ByteStream {
    let owner: ZipFileHandle
    let archive: ZipArchive
    let member: ZipArchive.Member
    var remaining: Int
    /// The stream ends where the member does, so its end and CRC can be verified.
    var readsToEnd = false

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(buffer.count <= remaining)
        var done = 0
        while done < buffer.count {
            let n = zip_fread(owner.file, buffer.baseAddress! + done, zip_uint64_t(buffer.count - done))
            if n < 0 {
                throw WSAMergeError.malformed(file: archive.path, reason: "zip member '\(member.name)' is corrupt: \(archive.error(owner.file))")
            }
            if n == 0 {
                throw WSAMergeError.malformed(file: archive.path, reason: "zip member '\(member.name)' ends after \(done) of \(buffer.count) bytes")
            }
            done += Int(n)
        }
        remaining -= buffer.count
        if remaining == 0 && readsToEnd { try checkEnd() }
    }

    /// Reads past the last byte: libzip then reports a CRC mismatch, and extra bytes mean the
    /// member inflates past the size the archive declares.
    private func checkEnd() throws {
        var probe: UInt8 = 0
        let n = zip_fread(owner.file, &probe, 1)
        if n < 0 {
            throw WSAMergeError.malformed(file: archive.path, reason: "zip member '\(member.name)' is corrupt: \(archive.error(owner.file))")
        }
        if n > 0 {
            throw WSAMergeError.malformed(file: archive.path, reason: "zip member '\(member.name)' inflates past its declared size of \(member.size) bytes")
        }
    }
}
