internal import CLinuxShims
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An error from file I/O, naming the file and what the user can do about it.
public struct BlockIOError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        case notFound, permissionDenied, noSpace, shortRead, invalidArgument, io, corrupt
        /// The path names a FIFO, a symbolic link, a directory, a device or a socket where a
        /// regular file was expected (`BlockFile.openRegularFile`).
        case notRegularFile
    }
    public var code: Code
    public var message: String
    public var errno: Errno?

    public init(_ code: Code, _ message: String, errno: Errno? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    public var description: String { message }

    /// The error for the calling thread's current `errno`.
    public static func fromErrno(_ what: String, path: String) -> BlockIOError {
        from(Errno(rawValue: Glibc.errno), what, path: path)
    }

    static func from(_ errno: Errno, _ what: String, path: String) -> BlockIOError {
        switch errno {
        case .noSuchFileOrDirectory:
            return BlockIOError(.notFound, "\(path): no such file; check the path", errno: errno)
        case .notDirectory:
            return BlockIOError(.notFound, "\(path): no such file (a component of the path is not a directory); check the path", errno: errno)
        case .isDirectory:
            return BlockIOError(.invalidArgument, "\(path): is a directory; give the path of a file", errno: errno)
        case .permissionDenied, .notPermitted:
            return BlockIOError(.permissionDenied, "\(path): permission denied while trying to \(what)", errno: errno)
        case .noSpace:
            return BlockIOError(.noSpace, "\(path): no space left on device while trying to \(what); free space and retry", errno: errno)
        case .fileExists:
            return BlockIOError(.invalidArgument, "\(path): already exists; remove it or choose another path", errno: errno)
        case .invalidArgument:
            return BlockIOError(.invalidArgument, "\(path): invalid argument while trying to \(what)", errno: errno)
        default:
            return BlockIOError(.io, "\(path): \(what) failed: \(errno)", errno: errno)
        }
    }
}

/// A flat file (a raw disk image, a flat extent, an overlay) read and written at offsets.
///
/// Reads and writes loop until every byte moved, so callers never see short transfers.
/// Positional I/O is safe from many threads at once; the descriptor closes on `close()`
/// or when the object goes away.
public final class BlockFile: Sendable {
    public let path: String
    public let descriptor: FileDescriptor
    public let isWritable: Bool

    /// How to open: `createNew` fails with `EEXIST` when the file exists (O_EXCL), so a
    /// disk being created can never clobber one that is already there.
    public enum Mode: Sendable { case readOnly, readWrite, createReadWrite, createNew }

    public init(path: String, mode: Mode) throws {
        self.path = path
        let access: FileDescriptor.AccessMode = mode == .readOnly ? .readOnly : .readWrite
        let options: FileDescriptor.OpenOptions
        switch mode {
        case .readOnly, .readWrite: options = [.closeOnExec]
        case .createReadWrite: options = [.create, .closeOnExec]
        case .createNew: options = [.create, .exclusiveCreate, .closeOnExec]
        }
        let creates = mode == .createReadWrite || mode == .createNew
        do {
            descriptor = try FileDescriptor.open(FilePath(path), access, options: options,
                                                 permissions: creates ? [.ownerReadWrite, .groupRead] : nil)
        } catch let e as Errno {
            throw BlockIOError.from(e, "open", path: path)
        }
        isWritable = mode != .readOnly
    }

    private init(path: String, descriptor: FileDescriptor) {
        self.path = path
        self.descriptor = descriptor
        isWritable = false
    }

    /// Opens an existing regular file read-only, and refuses anything else without waiting on
    /// it: a FIFO (a plain open for reading blocks until a writer comes, forever), a symbolic
    /// link (not followed), a directory, a device or a socket. For files that must be what
    /// their name says, such as repository objects.
    ///
    /// The open is `O_NONBLOCK | O_NOFOLLOW`, then `fstat` must say `S_ISREG`. `O_NONBLOCK`
    /// changes nothing for a regular file, so the descriptor stays as it is.
    /// - Throws: `.notRegularFile` saying what the path is, `.notFound`, or the open's error.
    public static func openRegularFile(path: String) throws -> BlockFile {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.nonBlocking, .noFollow, .closeOnExec])
        } catch let e as Errno {
            // ELOOP: a symbolic link (O_NOFOLLOW); ENXIO: a socket or a FIFO's odd cases.
            if e != .noSuchFileOrDirectory, let what = nonRegularKind(atPath: path) {
                throw notRegular(path, what, errno: e)
            }
            throw BlockIOError.from(e, "open", path: path)
        }
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else {
            let e = Errno(rawValue: errno)
            try? fd.close()
            throw BlockIOError.from(e, "stat", path: path)
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            try? fd.close()
            throw notRegular(path, describeFileType(st.st_mode), errno: nil)
        }
        return BlockFile(path: path, descriptor: fd)
    }

    /// What a path is when it is not a regular file ("a FIFO", "a symbolic link", ...), from
    /// `lstat` (links are not followed); nil for a regular file or a path that does not exist.
    public static func nonRegularKind(atPath path: String) -> String? {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT != S_IFREG else { return nil }
        return describeFileType(st.st_mode)
    }

    static func describeFileType(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: "a FIFO"
        case S_IFLNK: "a symbolic link"
        case S_IFDIR: "a directory"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        case S_IFREG: "a regular file"
        default: "of an unknown file type"
        }
    }

    private static func notRegular(_ path: String, _ what: String, errno: Errno?) -> BlockIOError {
        BlockIOError(.notRegularFile, "\(path): not a regular file (\(what))", errno: errno)
    }

    deinit { try? descriptor.close() }

    /// The file's size in bytes.
    public func size() throws -> UInt64 {
        var st = stat()
        guard fstat(descriptor.rawValue, &st) == 0 else { throw BlockIOError.from(Errno(rawValue: errno), "stat", path: path) }
        return UInt64(st.st_size)
    }

    /// The file's identity: device, inode, size, modification time in nanoseconds.
    public func identity() throws -> FileIdentity {
        var st = stat()
        guard fstat(descriptor.rawValue, &st) == 0 else { throw BlockIOError.from(Errno(rawValue: errno), "stat", path: path) }
        return FileIdentity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), size: UInt64(st.st_size),
                            modificationNanoseconds: Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec))
    }

    /// Reads exactly `buffer.count` bytes at `offset`. Bytes past the end of the file read as zero,
    /// because a flat image may be shorter than its disk (a sparse tail).
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockIOError.from(Errno(rawValue: errno), "read \(buffer.count) bytes at \(offset)", path: path)
            }
            if n == 0 {
                // End of file: the rest reads as zeroes.
                (buffer.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return
            }
            done += n
        }
    }

    /// Writes all of `buffer` at `offset`.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = pwrite(descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockIOError.from(Errno(rawValue: errno), "write \(buffer.count) bytes at \(offset)", path: path)
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    public func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return out
    }

    /// Makes data and metadata durable (fsync).
    public func sync() throws {
        while fsync(descriptor.rawValue) != 0 {
            if errno == EINTR { continue }
            throw BlockIOError.from(Errno(rawValue: errno), "fsync", path: path)
        }
    }

    /// Makes data durable (fdatasync): enough when the size did not change.
    public func syncData() throws {
        while fdatasync(descriptor.rawValue) != 0 {
            if errno == EINTR { continue }
            throw BlockIOError.from(Errno(rawValue: errno), "fdatasync", path: path)
        }
    }

    public func truncate(to size: UInt64) throws {
        while ftruncate(descriptor.rawValue, off_t(size)) != 0 {
            if errno == EINTR { continue }
            throw BlockIOError.from(Errno(rawValue: errno), "resize to \(size) bytes", path: path)
        }
    }

    /// Deallocates a byte range so it reads as zeroes and takes no space (a hole).
    /// Falls back to writing zeroes where the file system cannot punch holes.
    public func punchHole(_ range: ByteRange) throws {
        guard range.length > 0 else { return }
        if tessera_punch_hole(descriptor.rawValue, off_t(range.offset), off_t(range.length)) == 0 { return }
        let err = errno
        guard err == EOPNOTSUPP || err == ENOSYS else {
            throw BlockIOError.from(Errno(rawValue: err), "punch a hole at \(range)", path: path)
        }
        try writeZeroes(range)
    }

    /// Fills `buffer` from `offset` only if every byte is in the page cache
    /// (`preadv2(RWF_NOWAIT)`): a server can then answer on its event loop with a memory
    /// copy and send everything else to its thread pool. Bytes past the end of the file read
    /// as zeroes, as with `read`.
    /// - Returns: false when the read would wait for the disk or failed for any reason; the
    ///   caller then does an ordinary read, which reports real errors. `buffer` may be partly
    ///   overwritten in that case.
    public func readIfCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Bool {
        guard let base = buffer.baseAddress, !Self.noWaitUnsupported.load(ordering: .relaxed) else { return buffer.isEmpty }
        var done = 0
        while done < buffer.count {
            let n = tessera_pread_nowait(descriptor.rawValue, base + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                switch errno {
                case EINTR: continue
                case EOPNOTSUPP, EINVAL, ENOSYS: Self.noWaitUnsupported.store(true, ordering: .relaxed)
                default: break
                }
                return false
            }
            if n == 0 {
                (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return true
            }
            // A short read means only part is cached: the next call fails with EAGAIN or gets more.
            done += n
        }
        return true
    }

    /// Set once the kernel or file system refused RWF_NOWAIT, so we stop asking.
    private static let noWaitUnsupported = Atomic<Bool>(false)

    /// Starts reading a range into the page cache without waiting (posix_fadvise
    /// WILLNEED), so a later read finds it there: a reader overlaps its I/O with its work
    /// and keeps many requests in flight. Advisory; errors are ignored.
    public func prefetch(_ range: ByteRange) {
        guard range.length > 0 else { return }
        _ = tessera_prefetch(descriptor.rawValue, off_t(range.offset), off_t(range.length))
    }

    /// Starts writeback of a range's dirty pages without waiting (sync_file_range WRITE),
    /// so the disk writes while the writer goes on and a final fsync has little left.
    /// Advisory (no durability promise); errors are ignored.
    public func startWriteback(_ range: ByteRange) {
        guard range.length > 0 else { return }
        _ = tessera_start_writeback(descriptor.rawValue, off_t(range.offset), off_t(range.length))
    }

    /// Writes zero bytes over a range (allocating it).
    public func writeZeroes(_ range: ByteRange) throws {
        let step = 1 << 20
        let zeroes = [UInt8](repeating: 0, count: step)
        var at = range.offset
        while at < range.end {
            let n = Int(min(UInt64(step), range.end - at))
            try zeroes.withUnsafeBytes { try write(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: at) }
            at += UInt64(n)
        }
    }

    /// The allocated (data) ranges of the file within `range`, from SEEK_DATA / SEEK_HOLE.
    /// A file system without hole support reports everything as data, which is safe.
    public func dataRanges(in range: ByteRange) throws -> [ByteRange] {
        var out: [ByteRange] = []
        var at = range.offset
        let fd = descriptor.rawValue
        while at < range.end {
            let d = tessera_seek_data(fd, off_t(at))
            if d < 0 {
                if errno == ENXIO { break } // no more data after `at`
                if errno == EINVAL || errno == EOPNOTSUPP { return [range] }
                throw BlockIOError.from(Errno(rawValue: errno), "find data (SEEK_DATA)", path: path)
            }
            let dataStart = UInt64(d)
            if dataStart >= range.end { break }
            let h = tessera_seek_hole(fd, off_t(dataStart))
            let holeStart = h < 0 ? range.end : Swift.min(UInt64(h), range.end)
            out.append(ByteRange(offset: dataStart, length: holeStart - dataStart))
            at = holeStart
        }
        return out
    }
}

/// What identifies a file's content from outside: if any of these changed while the
/// tracker was not watching, its change history cannot be trusted.
public struct FileIdentity: Hashable, Sendable, Codable {
    public var device: UInt64
    public var inode: UInt64
    public var size: UInt64
    public var modificationNanoseconds: Int64

    public init(device: UInt64, inode: UInt64, size: UInt64, modificationNanoseconds: Int64) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modificationNanoseconds = modificationNanoseconds
    }
}
