import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A small tmpfs mounted for one test, to run out of space for real (ENOSPC) instead of
/// pretending. Needs root (CI and `Tools/test` run as root); without it the test fails with
/// a message saying so, it never skips.
public final class SmallFileSystem: @unchecked Sendable {
    public let path: String
    private let parent: TemporaryDirectory
    private var filler = 0

    public init(bytes: UInt64, label: String = "tmpfs") throws {
        parent = try TemporaryDirectory(label)
        path = parent.file("mnt")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let r = try runCommand("mount", ["-t", "tmpfs", "-o", "size=\(bytes),mode=0700", "tmpfs", path])
        guard r.succeeded else {
            throw CommandError(description: "cannot mount a \(bytes)-byte tmpfs at \(path) (this test needs root): \(r.stderr)")
        }
    }

    deinit { _ = try? runCommand("umount", ["-l", path]) }

    public func file(_ name: String) -> String { "\(path)/\(name)" }

    /// Bytes still free.
    public var free: UInt64 {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return 0 }
        return UInt64(st.f_bavail) * UInt64(st.f_frsize)
    }

    /// Fills the file system with a new filler file until only `leaving` bytes are free
    /// (rounded down to pages). Returns the filler's path; `unfill` removes every filler.
    @discardableResult
    public func fill(leaving: UInt64 = 0) throws -> String {
        filler += 1
        let name = file(".filler-\(filler)")
        let fd = open(name, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CommandError(description: "cannot create \(name): errno \(errno)") }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0xF1, count: 4096)
        while free > leaving {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, min(4096, Int(free - leaving))) }
            if n <= 0 { break }
        }
        return name
    }

    /// Removes every filler file.
    public func unfill() {
        for i in 0...filler { unlink(file(".filler-\(i)")) }
    }
}
