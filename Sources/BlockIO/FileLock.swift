import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An OS-level advisory lock (`flock`) on a file, held for as long as this value lives.
///
/// The kernel drops it when the process dies, however it dies, so a lock can never be
/// stale: if `acquire` fails, a live process holds the file. Two processes, or two open
/// file descriptions in one process, exclude each other. The filter holds one on its state
/// directory and one on every disk file it serves; `restore` asks whether a target file is
/// held before it writes to it.
///
/// `flock` and qemu's byte-range (OFD) locks are independent on Linux, so qemu-img and
/// qemu-io still open a file the filter holds.
public final class FileLock: Sendable {
    public let path: String
    private let fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }

    /// Who holds a lock that could not be taken.
    public struct Held: Error, Sendable, Equatable, CustomStringConvertible {
        public var path: String
        /// The holder's pid when the kernel says (`/proc/locks`), nil otherwise.
        public var pid: Int32?
        public var description: String {
            "\(path) is locked by \(pid.map { "process \($0)" } ?? "another process")"
        }
    }

    /// Takes an exclusive lock without waiting.
    /// - Parameters:
    ///   - path: the file to lock; created (mode 0600) when `create` is true and it is missing.
    ///   - writePid: replaces the file's content with this process's pid (for lock files
    ///     people read, like a pid file). Never use it on a disk file.
    /// - Throws: `Held` when another process (or another open file here) holds the lock,
    ///   `BlockIOError` when the file cannot be opened.
    public static func acquire(_ path: String, create: Bool = false, writePid: Bool = false) throws -> FileLock {
        let flags = (create ? O_CREAT : 0) | O_RDWR | O_CLOEXEC | O_NONBLOCK
        var fd = open(path, flags, 0o600)
        if fd < 0 && errno == EACCES && !create {
            // A read-only file can still be locked through a read-only descriptor.
            fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        }
        guard fd >= 0 else {
            throw BlockIOError.from(Errno(rawValue: errno), "open it to lock it", path: path)
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK {
                throw Held(path: path, pid: holder(of: path))
            }
            throw BlockIOError.from(Errno(rawValue: e), "lock it", path: path)
        }
        let lock = FileLock(path: path, fd: fd)
        if writePid {
            let text = Array("\(getpid())\n".utf8)
            if ftruncate(fd, 0) != 0 || pwrite(fd, text, text.count, 0) != text.count {
                throw BlockIOError.from(Errno(rawValue: errno), "write the pid into it", path: path)
            }
        }
        return lock
    }

    /// Whether some process holds an exclusive `flock` on `path` (the file must exist).
    /// - Returns: nil when the file is free, the holder otherwise.
    public static func holder(ifLocked path: String) throws -> Held? {
        do {
            _ = try acquire(path)
            return nil
        } catch let held as Held {
            return held
        }
    }

    /// The pid holding a `flock` on `path`, from `/proc/locks`; nil when none is listed.
    public static func holder(of path: String) -> Int32? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let dev = UInt64(st.st_dev)
        // glibc's gnu_dev_major / gnu_dev_minor, spelled out (they are macros in C).
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        let key = "\(hex2(major)):\(hex2(minor)):\(st.st_ino)"
        for line in readProcFile("/proc/locks").split(separator: "\n") {
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6, fields[1] == "FLOCK", fields[5] == key, let pid = Int32(fields[4]), pid > 0 else {
                continue
            }
            return pid
        }
        return nil
    }

    /// Reads a /proc file to its end (their size is reported as 0, so read until EOF).
    private static func readProcFile(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hex2(_ value: UInt64) -> String {
        let s = String(value, radix: 16)
        return s.count < 2 ? "0" + s : s
    }
}
