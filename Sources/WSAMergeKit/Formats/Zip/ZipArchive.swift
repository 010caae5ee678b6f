#if canImport(Glibc)
import Glibc
#endif
import CZip
import Synchronization

/// A zip archive opened read-only through libzip (with its consistency checks on), listing its
/// members and streaming one member at a time in bounded reads. libzip cannot use one archive
/// from two threads at once, so every call into it holds the archive's lock.
final class ZipArchive: Sendable {
    struct Member {
        let index: Int
        let name: String
        /// Uncompressed size the archive declares.
        let size: Int
    }

    let path: String
    let members: [Member]
    private let lock = Mutex(())
    // nonisolated(unsafe): libzip's handle is only ever used while `lock` is held (`withLock`).
    private nonisolated(unsafe) let archive: OpaquePointer

    init(path: String) throws {
        self.path = path
        var code: Int32 = 0
        guard let archive = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &code) else {
            if code == ZIP_ER_EXISTS {
                throw WSAMergeError.malformed(file: path, reason: "the archive holds two members of the same name (numpy would silently read only one of them)")
            }
            throw WSAMergeError.malformed(file: path, reason: "not a readable zip archive: \(ZipArchive.describe(code: code))")
        }
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
        self.archive = archive
    }

    deinit { zip_discard(archive) }

    /// Runs `body` with libzip's handle, holding the archive's lock.
    func withLock<R>(_ body: (OpaquePointer) throws -> R) rethrows -> R {
        try lock.withLock { _ in try body(archive) }
    }

    /// Opens member `index`, discards its first `skip` bytes and yields at most `limit` more.
    func openMember(index: Int, skip: Int, limit: Int) throws -> ZipMemberStream {
        let member = members[index]
        let file = withLock { zip_fopen_index($0, zip_uint64_t(index), 0) }
        guard let file else {
            throw WSAMergeError.malformed(file: path, reason: "zip member '\(member.name)' cannot be opened: \(withLock { ZipArchive.lastError($0) })")
        }
        var stream = ZipMemberStream(owner: ZipFileHandle(file, archive: self), archive: self, member: member, remaining: skip + limit,
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
        withLock { _ in String(cString: zip_file_strerror(file)) }
    }
}

/// Owns a libzip member handle, used and closed under its archive's lock.
final class ZipFileHandle {
    let file: OpaquePointer
    let archive: ZipArchive
    init(_ file: OpaquePointer, archive: ZipArchive) {
        self.file = file
        self.archive = archive
    }
    deinit { archive.withLock { _ in _ = zip_fclose(file) } }
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
            let n = archive.withLock { _ in zip_fread(owner.file, buffer.baseAddress! + done, zip_uint64_t(buffer.count - done)) }
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
        let n = archive.withLock { _ in zip_fread(owner.file, &probe, 1) }
        if n < 0 {
            throw WSAMergeError.malformed(file: archive.path, reason: "zip member '\(member.name)' is corrupt: \(archive.error(owner.file))")
        }
        if n > 0 {
            throw WSAMergeError.malformed(file: archive.path, reason: "zip member '\(member.name)' inflates past its declared size of \(member.size) bytes")
        }
    }
}

/// A tensor stored as a `.npy` member of a zip archive, after the member's `skip` header bytes.
struct ZipMember: TensorSource {
    let tensor: TensorInfo
    let archive: ZipArchive
    let index: Int
    let skip: Int
    /// Element width to byte-swap (big-endian data), or 0.
    let swapWidth: Int

    init(tensor: TensorInfo, archive: ZipArchive, index: Int, skip: Int, bigEndian: Bool) {
        self.tensor = tensor
        self.archive = archive
        self.index = index
        self.skip = skip
        swapWidth = bigEndian ? tensor.dtype.swapWidth : 0
    }

    var path: String { archive.path }
    /// One member at a time: the archive's lock would make parallel reads wait anyway, and a
    /// member streams only in order.
    var readsConcurrently: Bool { false }

    func makeStream() throws -> any ByteStream {
        let stream = try archive.openMember(index: index, skip: skip, limit: tensor.byteCount)
        return swapWidth > 1 ? SwappedStream(stored: stream, width: swapWidth) : stream
    }
}
