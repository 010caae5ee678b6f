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
    private let writer = DispatchQueue(label: "wsamerge.output")
    private let lock = DispatchSemaphore(value: 1)
    /// The first write error of the background thread (under `lock`).
    private var writeError: Error?
    /// Whether the descriptor has `O_DIRECT` (only the background thread changes it after init).
    private var direct = false
    /// Bytes already handed to the kernel for write-back (see `startWriteBack`).
    private var writeBackStart = 0

    /// Prepares `destination` after `precheck`; nothing is visible there until `commit()`.
    /// `directIO: false` writes through the page cache (as on file systems without direct I/O).
    public init(destination: String, force: Bool, inputs: Set<FileIdentity>, directIO: Bool = true) throws {
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
        direct = directIO && wsk_set_direct(fd, 1) == 0
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
        writer.sync {}
        close(descriptor)
        if !committed, let temporaryPath { unlink(temporaryPath) }
    }

    /// Appends `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
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
            let wasDirect = direct
            try bytes.withUnsafeBytes { raw throws in try writeFully(UnsafeRawBufferPointer(rebasing: raw[0..<inFile]), at: position) }
            if wasDirect { try setDirect(true) }
        }
    }

    /// Hands the full block to the background writer and moves to the next one, waiting if it
    /// is still being written.
    private func submitBlock() throws {
        let block = blocks[current], start = blockStart
        let group = DispatchGroup()
        inFlight[current] = group
        writer.async(group: group) { [self] in
            guard locked({ writeError }) == nil else { return }
            do {
                try writeFully(UnsafeRawBufferPointer(block.prefix(Self.blockBytes)), at: start, directAllowed: true)
                startWriteBack(upTo: start + Self.blockBytes)
            } catch {
                locked { writeError = error }
            }
        }
        blockStart += Self.blockBytes
        filled = 0
        current = (current + 1) % blocks.count
        inFlight[current]?.wait()
        inFlight[current] = nil
        if let error = locked({ writeError }) { throw error }
    }

    /// Waits until every submitted block is written.
    private func finishBlocks() throws {
        writer.sync {}
        if let error = locked({ writeError }) { throw error }
    }

    /// Writes the partly filled block, waits for everything and frees the blocks; nothing may
    /// be written or patched after it. With direct I/O the last block is written whole,
    /// zero-padded to the device's block size, and the file is then cut back to its length.
    /// `commit()` calls it; a writer of several files calls it as each one is complete.
    public func finishWriting() throws {
        try finishBlocks()
        defer { blocks = [] }
        guard filled > 0 else { return }
        if direct {
            let padded = (filled + 4095) / 4096 * 4096
            (blocks[current].base + filled).initializeMemory(as: UInt8.self, repeating: 0, count: padded - filled)
            try writeFully(UnsafeRawBufferPointer(blocks[current].prefix(padded)), at: blockStart, directAllowed: true)
            guard ftruncate(descriptor, off_t(offset)) == 0 else {
                throw WSAMergeError.io(file: destination, reason: "write failed: \(systemError(errno))")
            }
        } else {
            try writeFully(UnsafeRawBufferPointer(blocks[current].prefix(filled)), at: blockStart)
        }
        blockStart += filled
        filled = 0
    }

    /// Runs `body` holding `lock`.
    private func locked<R>(_ body: () -> R) -> R {
        lock.wait()
        defer { lock.signal() }
        return body()
    }

    /// Turns `O_DIRECT` on or off.
    private func setDirect(_ on: Bool) throws {
        guard direct != on else { return }
        guard wsk_set_direct(descriptor, on ? 1 : 0) == 0 else {
            throw WSAMergeError.io(file: destination, reason: "write failed: \(systemError(errno))")
        }
        direct = on
    }

    /// Starts asynchronous write-back of every 64 MB written through the page cache, so the
    /// final `fsync` has little left to do and dirty pages do not pile up.
    private func startWriteBack(upTo end: Int) {
        #if canImport(Glibc)
        guard !direct else { return }
        let step = 64 << 20
        while end - writeBackStart >= step {
            _ = wsk_start_writeback(descriptor, Int64(writeBackStart), Int64(step))
            writeBackStart += step
        }
        #endif
    }

    /// Writes all of `bytes` at `position`. A direct write the file system refuses (EINVAL:
    /// it does not support direct I/O) turns direct I/O off and is retried through the cache.
    private func writeFully(_ bytes: UnsafeRawBufferPointer, at position: Int, directAllowed: Bool = false) throws {
        if direct && !directAllowed { try setDirect(false) }
        var done = 0
        while done < bytes.count {
            let n = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(position + done))
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EINVAL, direct {
                    try setDirect(false)
                    continue
                }
                throw WSAMergeError.io(file: destination, reason: "write failed: \(systemError(errno))")
            }
            done += n
        }
    }

    /// Flushes, syncs and puts the file at its destination (replacing what `force` allowed).
    public func commit() throws {
        try finishWriting()
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
