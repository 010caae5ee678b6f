import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An output written atomically: bytes go to an unnamed temporary file in the destination's
/// directory (`O_TMPFILE`), which is linked into place only by `commit()`. A failed or killed
/// run therefore leaves nothing at the destination and no temporary behind. Where `O_TMPFILE`
/// is not supported, a hidden named temporary is used and removed on failure.
public final class OutputFile {
    public let destination: String
    private let force: Bool
    private let descriptor: Int32
    private var temporaryPath: String?
    private var committed = false
    private let buffer = RawBuffer(byteCount: 1 << 20)
    private var buffered = 0
    /// Bytes already handed to the kernel for write-back (see `startWriteBack`).
    private var writeBackStart = 0
    /// Bytes written so far (the offset of the next write).
    public private(set) var offset = 0

    /// Prepares `destination` after `precheck`; nothing is visible there until `commit()`.
    public init(destination: String, force: Bool, inputs: Set<FileIdentity>) throws {
        self.destination = destination
        self.force = force
        try Self.precheck(destination, force: force, inputs: inputs)
        let directory = parentDirectory(of: destination)
        var fd = open(directory, Int32(0o20200000) /* O_TMPFILE */ | O_WRONLY | O_CLOEXEC, 0o666)
        if fd < 0, errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL {
            let name = "\(directory)/.\(baseName(of: destination)).wsamerge-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).tmp"
            fd = open(name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o666)
            if fd >= 0 { temporaryPath = name }
        }
        guard fd >= 0 else {
            throw WSAMergeError.cannotCreate(file: destination, reason: systemError(errno))
        }
        descriptor = fd
    }

    /// Refuses `destination` when it is one of `inputs` (same inode, whatever the link), exists
    /// without `force`, is a directory, or lies in a directory that does not exist.
    public static func precheck(_ destination: String, force: Bool, inputs: Set<FileIdentity>) throws {
        if let identity = FileIdentity(path: destination) {
            if inputs.contains(identity) {
                throw WSAMergeError.cannotCreate(file: destination, reason: "output is one of the inputs; refusing to overwrite it")
            }
            if pathKind(destination) == .directory {
                throw WSAMergeError.cannotCreate(file: destination, reason: "is a directory")
            }
            if !force {
                throw WSAMergeError.cannotCreate(file: destination, reason: "output exists (pass --force to replace it)")
            }
        }
        let directory = parentDirectory(of: destination)
        guard pathKind(directory) == .directory else {
            throw WSAMergeError.cannotCreate(file: destination, reason: "directory '\(directory)' does not exist")
        }
    }

    deinit {
        close(descriptor)
        if !committed, let temporaryPath { unlink(temporaryPath) }
    }

    /// Appends `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count > 0 else { return }
        // Large writes (whole chunks) go straight to the file; small ones are gathered.
        if bytes.count >= buffer.byteCount / 4 {
            try flush()
            try writeFully(bytes, at: offset)
            offset += bytes.count
            startWriteBack()
            return
        }
        if buffered + bytes.count > buffer.byteCount { try flush() }
        (buffer.base + buffered).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        buffered += bytes.count
        offset += bytes.count
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw throws in try write(raw) }
    }

    public func write(_ text: String) throws {
        try write(Array(text.utf8))
    }

    /// Overwrites already written bytes at `position` (for headers patched after the data).
    public func patch(_ bytes: [UInt8], at position: Int) throws {
        try flush()
        try bytes.withUnsafeBytes { raw throws in try writeFully(raw, at: position) }
    }

    /// Writes what is buffered.
    public func flush() throws {
        guard buffered > 0 else { return }
        try writeFully(UnsafeRawBufferPointer(buffer.prefix(buffered)), at: offset - buffered)
        buffered = 0
        startWriteBack()
    }

    /// Starts asynchronous write-back of every 64 MB written, so the final `fsync` has little
    /// left to do and dirty pages do not pile up.
    private func startWriteBack() {
        #if canImport(Glibc)
        let step = 64 << 20
        while offset - writeBackStart >= step {
            _ = wsk_start_writeback(descriptor, Int64(writeBackStart), Int64(step))
            writeBackStart += step
        }
        #endif
    }

    private func writeFully(_ bytes: UnsafeRawBufferPointer, at position: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(position + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw WSAMergeError.io(file: destination, reason: "write failed: \(systemError(errno))")
            }
            done += n
        }
    }

    /// Flushes, syncs and puts the file at its destination (replacing what `force` allowed).
    public func commit() throws {
        try flush()
        guard fsync(descriptor) == 0 else { throw WSAMergeError.io(file: destination, reason: "fsync failed: \(systemError(errno))") }
        let appeared = WSAMergeError.cannotCreate(file: destination, reason: "output appeared while writing (pass --force to replace it)")
        if let temporaryPath {
            if force {
                guard rename(temporaryPath, destination) == 0 else {
                    throw WSAMergeError.cannotCreate(file: destination, reason: systemError(errno))
                }
            } else {
                // link(2) refuses an existing destination, unlike rename(2).
                guard link(temporaryPath, destination) == 0 else {
                    throw errno == EEXIST ? appeared : WSAMergeError.cannotCreate(file: destination, reason: systemError(errno))
                }
                unlink(temporaryPath)
            }
        } else {
            let procPath = "/proc/self/fd/\(descriptor)"
            if linkat(AT_FDCWD, procPath, AT_FDCWD, destination, AT_SYMLINK_FOLLOW) != 0 {
                guard errno == EEXIST else { throw WSAMergeError.cannotCreate(file: destination, reason: systemError(errno)) }
                guard force else { throw appeared }
                // Replacing an existing file (--force): link under a hidden name, then rename over it.
                let directory = parentDirectory(of: destination)
                let hidden = "\(directory)/.\(baseName(of: destination)).wsamerge-\(getpid()).tmp"
                unlink(hidden)
                guard linkat(AT_FDCWD, procPath, AT_FDCWD, hidden, AT_SYMLINK_FOLLOW) == 0 else {
                    throw WSAMergeError.cannotCreate(file: destination, reason: systemError(errno))
                }
                guard rename(hidden, destination) == 0 else {
                    let reason = systemError(errno)
                    unlink(hidden)
                    throw WSAMergeError.cannotCreate(file: destination, reason: reason)
                }
            }
        }
        committed = true
    }
}

/// The directory part of `path` (`.` for a bare name).
func parentDirectory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    let head = String(path[..<slash])
    return head.isEmpty ? "/" : head
}

/// The last component of `path`.
func baseName(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return path }
    return String(path[path.index(after: slash)...])
}
