#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An open input file read with bounded `pread`s: no mapping, so a file truncated while it is
/// read gives a clear error instead of SIGBUS, and nothing beyond the caller's buffer is held.
///
/// The one owner of its descriptor; closed on `deinit`.
public final class ReadableFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    /// Device and inode, to recognise the same file under another name.
    public let identity: FileIdentity
    private let descriptor: Int32

    /// Opens `path` for reading. Refuses directories, FIFOs and other non-regular files.
    public init(path: String) throws {
        self.path = path
        var info = stat()
        guard stat(path, &info) == 0 else {
            let reason = systemError(errno)
            if errno == ENOENT || errno == ENOTDIR {
                throw WSAMergeError.missingInput(file: path, reason: lstat(path, &info) == 0 ? "dangling symbolic link" : "no such file")
            }
            throw WSAMergeError.missingInput(file: path, reason: reason)
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw WSAMergeError.missingInput(file: path, reason: (info.st_mode & S_IFMT) == S_IFDIR ? "is a directory, not a checkpoint file" : "not a regular file")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw WSAMergeError.missingInput(file: path, reason: systemError(errno)) }
        var opened = stat()
        guard fstat(fd, &opened) == 0, (opened.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw WSAMergeError.missingInput(file: path, reason: "not a regular file")
        }
        descriptor = fd
        size = Int(opened.st_size)
        identity = FileIdentity(device: UInt64(opened.st_dev), inode: UInt64(opened.st_ino))
        #if canImport(Glibc)
        posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_SEQUENTIAL))
        #endif
    }

    deinit { close(descriptor) }

    /// Fills `buffer` with the bytes at `offset`. A short file is an I/O error (the file changed
    /// under us: its size was checked when it was opened).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw WSAMergeError.io(file: path, reason: "read failed: \(systemError(errno))")
            }
            if n == 0 {
                throw WSAMergeError.io(file: path, reason: "file ended at byte \(offset + done), expected \(offset + buffer.count) (truncated while reading?)")
            }
            done += n
        }
    }

    /// Reads `count` bytes at `offset` into a new array (for headers).
    public func readBytes(at offset: Int, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { buffer throws in
            if count > 0 { try read(into: buffer, at: offset) }
        }
        return bytes
    }
}

/// A file's device and inode: equal identities are the same file, whatever the path or link.
public struct FileIdentity: Hashable, Sendable {
    public let device: UInt64
    public let inode: UInt64

    /// The identity of the file at `path`, following links, or `nil` when there is none.
    public init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.init(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    public init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }
}

/// Whether two paths name the same file, whether it exists yet or not: the same identity, or the
/// same name in the same (resolved) directory (`w/same.json`, `w/./same.json`, an absolute path).
public func sameFile(_ a: String, _ b: String) -> Bool {
    if a == b { return true }
    if let x = FileIdentity(path: a), let y = FileIdentity(path: b) { return x == y }
    func place(_ path: String) -> String? {
        let slash = path.lastIndex(of: "/")
        let parent = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        return realPath(parent).map { $0 + "/" + name }
    }
    guard let x = place(a), let y = place(b) else { return false }
    return x == y
}

/// The C library's text for an `errno` value.
func systemError(_ code: Int32) -> String {
    String(cString: strerror(code))
}

/// Kind of thing at `path`, without following a final symbolic link when `follow` is false.
enum PathKind { case missing, file, directory, other }

func pathKind(_ path: String) -> PathKind {
    var info = stat()
    guard stat(path, &info) == 0 else { return .missing }
    switch info.st_mode & S_IFMT {
    case S_IFREG: return .file
    case S_IFDIR: return .directory
    default: return .other
    }
}

/// `directory/name`, with one slash between them whatever `directory` ends with (`base/` and
/// `base` give `base/name`, not `base//name`).
func joinPath(_ directory: String, _ name: String) -> String {
    var head = Substring(directory)
    while head.count > 1 && head.hasSuffix("/") { head = head.dropLast() }
    return head == "/" ? "/" + name : head + "/" + name
}

/// The canonical absolute path of `path` (links resolved), or `nil` when it does not exist.
func realPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// The names in directory `path`, sorted (empty when it cannot be read).
func listDirectory(_ path: String) -> [String] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    // The name is read in place: a record at the end of readdir's buffer can be shorter than
    // `dirent` (d_name holds only the name), so copying `entry.pointee` reads past the buffer.
    let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    while let entry = readdir(dir) {
        let name = String(cString: UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self))
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}
