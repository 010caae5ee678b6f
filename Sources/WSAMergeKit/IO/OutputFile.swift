import CKernels
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An output written atomically: bytes go to an unnamed temporary file in the destination's
/// directory (`O_TMPFILE`), which is linked into place only by `commit()`. A failed or killed
/// run therefore leaves nothing at the destination and no temporary behind. Where `O_TMPFILE`
/// is not supported, a hidden named temporary is used and removed on failure.
///
/// Writes are gathered into a ring of 2 MiB blocks that a background thread writes in order,
/// with direct I/O (`O_DIRECT`) where the file system allows it: the data goes from the block to
/// the device without a page-cache copy, the device works while the caller computes, and the
/// final `fsync` has only metadata left. Elsewhere the same blocks are written through the page
/// cache, with write-back started as they go.
public final class OutputFile {
    public let destination: String
    private let force: Bool
    private let descriptor: Int32
    private var temporaryPath: String?
    /// The named temporary's entry in `CleanupOnSignal` (-1: none).
    private var cleanupSlot: Int32 = -1
    private var committed = false
    /// Bytes written so far (the offset of the next write).
    public private(set) var offset = 0

    /// The ring of blocks: `blocks[current]` is being filled; it starts at file offset
    /// `blockStart` and holds `filled` bytes. Full blocks go to `writer`, in order.
    /// The blocks are allocated on the first write and freed by `finishWriting()`, so an output
    /// that is complete (a finished shard waiting for the others) holds no memory.
    private static let blockBytes = 2 << 20
    private var blocks: [RawBuffer] = []
    private var inFlight: [DispatchGroup?] = [nil, nil, nil, nil]
    private var current = 0
    private var filled = 0
    private var blockStart = 0
    private var writingFinished = false
    private var synced = false
    private let writer = DispatchQueue(label: "wsamerge.output")
    /// What the background writes use (they never hold the `OutputFile` itself, so its `deinit`
    /// runs on the caller's thread and can wait for them).
    private let sink: Sink

    /// Prepares `destination` after `precheck`; nothing is visible there until `commit()`.
    /// `directIO: false` writes through the page cache (as on file systems without direct I/O).
    public init(destination: String, force: Bool, inputs: Set<FileIdentity>, directIO: Bool = true) throws {
        self.destination = destination
        self.force = force
        try Self.precheck(destination, force: force, inputs: inputs)
        let directory = parentDirectory(of: destination)
        removeDeadTemporaries(in: directory, of: baseName(of: destination))
        var fd: Int32 = -1
        if !TestHooks.noTmpfile {
            fd = open(directory, Int32(0o20200000) /* O_TMPFILE */ | O_WRONLY | O_CLOEXEC, 0o666)
        }
        if fd < 0, TestHooks.noTmpfile || errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL {
            let name = "\(directory)/.\(baseName(of: destination)).wsamerge-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).tmp"
            // Registered before it exists, so that SIGINT/SIGTERM never miss it.
            cleanupSlot = CleanupOnSignal.add(.unlink, name)
            fd = open(name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o666)
            if fd >= 0 { temporaryPath = name }
        }
        guard fd >= 0 else {
            let reason = systemError(errno)
            CleanupOnSignal.remove(cleanupSlot)
            throw WSAMergeError.cannotCreate(file: destination, reason: reason)
        }
        descriptor = fd
        sink = Sink(descriptor: fd, destination: destination, direct: directIO && wsk_set_direct(fd, 1) == 0)
    }

    /// Longest output name: the hidden temporary beside it (`.NAME.wsamerge-PID-RAND.tmp`) adds
    /// 33 bytes, and a file name holds at most 255.
    public static let maxNameBytes = 222

    /// `-` as an output: the shell convention for standard output, which outputs are not written
    /// to (a checkpoint is not a stream, and the report is already there); `./-` names a file.
    static func refuseStandardOutput(_ destination: String) throws {
        guard destination == "-" else { return }
        throw WSAMergeError.usage("'-' as an output: outputs are written to files, not to standard output (where the report goes); name a file, or ./- for one called '-'")
    }

    /// Refuses `destination` when it is `-`, is one of `inputs` (same inode, whatever the link),
    /// exists without `force`, is a directory or another non-regular file (a device, a FIFO: never
    /// replaced, even with `force`), is a dangling symbolic link without `force`, has a name too
    /// long for its temporary, or lies in a directory that does not exist.
    public static func precheck(_ destination: String, force: Bool, inputs: Set<FileIdentity>) throws {
        try refuseStandardOutput(destination)
        if let identity = FileIdentity(path: destination) {
            if inputs.contains(identity) {
                throw WSAMergeError.cannotCreate(file: destination, reason: "output is one of the inputs; refusing to overwrite it")
            }
            switch pathKind(destination) {
            case .directory:
                throw WSAMergeError.cannotCreate(file: destination, reason: "is a directory")
            case .other:
                throw WSAMergeError.cannotCreate(file: destination, reason: "is not a regular file (a device, FIFO or socket); refusing to replace it")
            default:
                break
            }
            if !force {
                throw WSAMergeError.hinted(.cannotCreate(file: destination, reason: "output exists"), .force)
            }
        } else {
            var info = stat()
            if lstat(destination, &info) == 0, !force {
                throw WSAMergeError.cannotCreate(file: destination, reason: "is a dangling symbolic link (pass --force to replace the link)")
            }
        }
        let name = baseName(of: destination)
        guard name.utf8.count <= maxNameBytes else {
            throw WSAMergeError.cannotCreate(file: destination,
                                             reason: "file name is \(name.utf8.count) bytes; at most \(maxNameBytes) leave room for the temporary file written beside it")
        }
        let directory = parentDirectory(of: destination)
        guard pathKind(directory) == .directory else {
            throw WSAMergeError.cannotCreate(file: destination, reason: pathKind(directory) == .missing ? "directory '\(directory)' does not exist" : "'\(directory)' is not a directory")
        }
    }

    deinit {
        writer.sync {}
        close(descriptor)
        discard()
    }

    /// Removes the named temporary of an output that will not be committed (a failed run). The
    /// writer of a directory calls it for every file before it removes the directory.
    public func discard() {
        if !committed, let temporaryPath {
            unlink(temporaryPath)
            self.temporaryPath = nil
        }
        CleanupOnSignal.remove(cleanupSlot)
        cleanupSlot = -1
    }

    /// Appends `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!writingFinished, "write after finishWriting()")
        if blocks.isEmpty && bytes.count > 0 {
            blocks = (0..<inFlight.count).map { _ in RawBuffer(byteCount: Self.blockBytes, alignment: 4096) }
        }
        var done = 0
        while done < bytes.count {
            let n = Swift.min(bytes.count - done, Self.blockBytes - filled)
            (blocks[current].base + filled).copyMemory(from: bytes.baseAddress! + done, byteCount: n)
            filled += n
            done += n
            offset += n
            if filled == Self.blockBytes { try submitBlock() }
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw throws in try write(raw) }
    }

    public func write(_ text: String) throws {
        try write(Array(text.utf8))
    }

    /// Overwrites already written bytes at `position` (for headers patched after the data).
    public func patch(_ bytes: [UInt8], at position: Int) throws {
        precondition(position >= 0 && position + bytes.count <= offset)
        // The part still in the block being filled is patched there; the rest is in the file.
        let inBlock = Swift.max(0, position + bytes.count - Swift.max(position, blockStart))
        let inFile = bytes.count - inBlock
        if inBlock > 0 {
            let from = Swift.max(position, blockStart)
            bytes.withUnsafeBytes { raw in
                (blocks[current].base + (from - blockStart)).copyMemory(from: raw.baseAddress! + inFile, byteCount: inBlock)
            }
        }
        if inFile > 0 {
            // A few bytes, written through the page cache: their pages lie before `blockStart`,
            // where no direct write goes any more, so the two kinds of write stay coherent.
            try finishBlocks()
            let wasDirect = sink.direct
            try bytes.withUnsafeBytes { raw throws in try sink.write(UnsafeRawBufferPointer(rebasing: raw[0..<inFile]), at: position) }
            if wasDirect { try sink.setDirect(true) }
        }
    }

    /// Hands the full block to the background writer and moves to the next one, waiting if it
    /// is still being written.
    private func submitBlock() throws {
        let block = blocks[current], start = blockStart, sink = sink
        let group = DispatchGroup()
        inFlight[current] = group
        writer.async(group: group) {
            guard sink.error == nil else { return }
            do {
                try sink.write(UnsafeRawBufferPointer(block.prefix(Self.blockBytes)), at: start, directAllowed: true)
                sink.startWriteBack(upTo: start + Self.blockBytes)
            } catch {
                sink.error = error
            }
        }
        blockStart += Self.blockBytes
        filled = 0
        current = (current + 1) % blocks.count
        inFlight[current]?.wait()
        inFlight[current] = nil
        if let error = sink.error { throw error }
    }

    /// Waits until every submitted block is written.
    private func finishBlocks() throws {
        writer.sync {}
        if let error = sink.error { throw error }
    }

    /// Writes the partly filled block, waits for everything and frees the blocks; nothing may
    /// be written or patched after it. With direct I/O the whole device blocks of the tail are
    /// written directly and the last few bytes through the page cache (no padding, which could
    /// exceed a file-size limit or a quota). `commit()` calls it; a writer of several files calls
    /// it as each one is complete.
    public func finishWriting() throws {
        try finishBlocks()
        defer {
            blocks = []
            writingFinished = true
        }
        guard filled > 0 else { return }
        let aligned = sink.direct ? filled / 4096 * 4096 : 0
        if aligned > 0 {
            try sink.write(UnsafeRawBufferPointer(blocks[current].prefix(aligned)), at: blockStart, directAllowed: true)
        }
        if filled > aligned {
            try sink.write(UnsafeRawBufferPointer(rebasing: blocks[current].prefix(filled)[aligned...]), at: blockStart + aligned)
        }
        blockStart += filled
        filled = 0
    }

    /// Writes what is left and `fsync`s the file, still unnamed: the slow part of `commit()`. A
    /// writer of several files syncs them all before it commits any, so that they appear
    /// together, not one per sync.
    public func sync() throws {
        guard !synced else { return }
        try finishWriting()
        guard fsync(descriptor) == 0 else { throw WSAMergeError.io(file: destination, reason: "fsync failed: \(systemError(errno))") }
        synced = true
        TestHooks.pause(at: "sync")
    }

    /// Syncs the file (if `sync()` has not) and puts it at its destination, replacing what
    /// `force` allowed.
    public func commit() throws {
        try sync()
        let appeared = WSAMergeError.hinted(.cannotCreate(file: destination, reason: "output appeared while writing"), .force)
        if let temporaryPath {
            if force {
                guard pathKind(destination) != .other else {
                    throw WSAMergeError.cannotCreate(file: destination, reason: "is not a regular file (a device, FIFO or socket); refusing to replace it")
                }
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
            CleanupOnSignal.remove(cleanupSlot)
            cleanupSlot = -1
        } else {
            let procPath = "/proc/self/fd/\(descriptor)"
            if linkat(AT_FDCWD, procPath, AT_FDCWD, destination, AT_SYMLINK_FOLLOW) != 0 {
                guard errno == EEXIST else { throw WSAMergeError.cannotCreate(file: destination, reason: systemError(errno)) }
                guard force else { throw appeared }
                guard pathKind(destination) != .other else {
                    throw WSAMergeError.cannotCreate(file: destination, reason: "is not a regular file (a device, FIFO or socket); refusing to replace it")
                }
                // Replacing an existing file (--force): link under a hidden name, then rename over it.
                let directory = parentDirectory(of: destination)
                let hidden = "\(directory)/.\(baseName(of: destination)).wsamerge-\(getpid()).tmp"
                unlink(hidden)
                let slot = CleanupOnSignal.add(.unlink, hidden)
                defer { CleanupOnSignal.remove(slot) }
                guard linkat(AT_FDCWD, procPath, AT_FDCWD, hidden, AT_SYMLINK_FOLLOW) == 0 else {
                    throw WSAMergeError.cannotCreate(file: destination, reason: systemError(errno))
                }
                TestHooks.pause(at: "link")
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

/// The descriptor side of an `OutputFile`: positioned writes, direct I/O on or off, and the first
/// error of the background writes. Shared by the caller and the background thread.
private final class Sink: @unchecked Sendable {
    let descriptor: Int32
    let destination: String
    private let lock = DispatchSemaphore(value: 1)
    private var firstError: Error?
    /// Whether the descriptor has `O_DIRECT`; changed only while no background write runs.
    private(set) var direct: Bool
    /// Whether a direct write has succeeded: after that, EINVAL is a real error, not a file
    /// system without direct I/O.
    private var directWorks = false
    /// Bytes already handed to the kernel for write-back (see `startWriteBack`).
    private var writeBackStart = 0

    init(descriptor: Int32, destination: String, direct: Bool) {
        self.descriptor = descriptor
        self.destination = destination
        self.direct = direct
    }

    /// The first error of a background write.
    var error: Error? {
        get {
            lock.wait()
            defer { lock.signal() }
            return firstError
        }
        set {
            lock.wait()
            defer { lock.signal() }
            if firstError == nil { firstError = newValue }
        }
    }

    /// Turns `O_DIRECT` on or off.
    func setDirect(_ on: Bool) throws {
        guard direct != on else { return }
        guard wsk_set_direct(descriptor, on ? 1 : 0) == 0 else {
            throw WSAMergeError.io(file: destination, reason: "write failed: \(systemError(errno))")
        }
        direct = on
    }

    /// Writes all of `bytes` at `position`; directly only where `directAllowed` (whole, aligned
    /// device blocks). If the very first direct write is refused (EINVAL: the file system does
    /// not support direct I/O), direct I/O is turned off and the write retried through the cache.
    func write(_ bytes: UnsafeRawBufferPointer, at position: Int, directAllowed: Bool = false) throws {
        if direct && !directAllowed { try setDirect(false) }
        var done = 0
        while done < bytes.count {
            let n = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(position + done))
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EINVAL, direct, !directWorks {
                    try setDirect(false)
                    continue
                }
                throw WSAMergeError.io(file: destination, reason: "write failed: \(systemError(errno))")
            }
            if direct { directWorks = true }
            done += n
        }
    }

    /// Starts asynchronous write-back of every 64 MB written through the page cache, so the
    /// final `fsync` has little left to do and dirty pages do not pile up.
    func startWriteBack(upTo end: Int) {
        #if canImport(Glibc)
        guard !direct else { return }
        let step = 64 << 20
        while end - writeBackStart >= step {
            _ = wsk_start_writeback(descriptor, Int64(writeBackStart), Int64(step))
            writeBackStart += step
        }
        #endif
    }
}

/// Removes hidden temporaries (`.NAME.wsamerge-PID[-RAND].tmp`) and backups
/// (`.NAME.wsamerge-PID.old`) that runs now dead left beside `name` in `directory` (a run killed
/// with SIGKILL, or while linking a `--force` output into place). Those of live runs stay.
func removeDeadTemporaries(in directory: String, of name: String) {
    let prefix = "." + name + ".wsamerge-"
    for entry in listDirectory(directory) where entry.hasPrefix(prefix) && (entry.hasSuffix(".tmp") || entry.hasSuffix(".old")) {
        let rest = entry.dropFirst(prefix.count).dropLast(4)
        let parts = rest.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let pid = Int32(parts[0]), pid > 0, pid != getpid() else { continue }
        if kill(pid, 0) != 0 && errno == ESRCH { unlink(directory + "/" + entry) }
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
