import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Crash-safe whole-file writes: temp file, fsync, rename, fsync of the directory.
///
/// After a crash the path holds either the old content or the new content, never a mix
/// and never a truncated file.
public enum DurableFile {
    /// Replaces (or creates) `path` with `bytes` atomically and durably.
    /// - Parameter syncDirectory: false lets a caller batch directory syncs (it must then
    ///   call `syncDirectory` itself before relying on the name).
    public static func write(_ bytes: [UInt8], to path: String, syncDirectory: Bool = true) throws {
        let directory = parentDirectory(of: path)
        let temp = "\(path).tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max) & 0xffffff)"
        do {
            let file = try BlockFile(path: temp, mode: .createReadWrite)
            try file.truncate(to: 0)
            try file.write(bytes, at: 0)
            try file.sync()
        } catch {
            unlink(temp)
            throw error
        }
        guard rename(temp, path) == 0 else {
            let e = Errno(rawValue: errno)
            unlink(temp)
            throw BlockIOError.from(e, "rename \(temp) into place", path: path)
        }
        if syncDirectory { try DurableFile.syncDirectory(directory) }
    }

    /// fsyncs a directory so the names created or renamed in it survive a crash.
    public static func syncDirectory(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw BlockIOError.from(Errno(rawValue: errno), "open directory", path: directory) }
        defer { close(fd) }
        while fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw BlockIOError.from(Errno(rawValue: errno), "fsync directory", path: directory)
        }
    }

    /// Reads a whole file.
    public static func read(_ path: String) throws -> [UInt8] {
        let file = try BlockFile(path: path, mode: .readOnly)
        let size = try file.size()
        return try file.read(count: Int(size), at: 0)
    }

    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// Creates a directory and its parents (mode 0700 unless given).
    public static func makeDirectory(_ path: String, mode: mode_t = 0o700) throws {
        var partial = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            partial += "/" + component
            if mkdir(partial, mode) != 0 && errno != EEXIST {
                throw BlockIOError.from(Errno(rawValue: errno), "create directory", path: partial)
            }
        }
    }

    public static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = String(path[..<slash])
        return dir.isEmpty ? "/" : dir
    }

    /// Bytes an unprivileged writer may still use on the file system holding `directory`.
    public static func freeSpace(in directory: String) throws -> UInt64 {
        var st = statvfs()
        guard statvfs(directory, &st) == 0 else {
            throw BlockIOError.from(Errno(rawValue: errno), "read the file system's free space", path: directory)
        }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }

    /// Checks before changing anything that `bytes` fit, so a step that needs the room does
    /// not fail halfway and leave things half changed.
    /// - Throws: `BlockIOError.noSpace` saying how much is needed and how much is free.
    public static func requireFreeSpace(_ bytes: UInt64, in directory: String, for what: String) throws {
        let free = try freeSpace(in: directory)
        guard free >= bytes else {
            throw BlockIOError(.noSpace, "\(directory): \(what) needs \(bytes) bytes but only \(free) are free; free space there (or move the state directory) and retry")
        }
    }
}
