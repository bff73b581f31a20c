import BlockIO
#if canImport(Glibc)
import Glibc
#endif

/// Minimal blocking Unix-domain stream sockets for the control endpoint.
///
/// The endpoint carries a few small requests per backup, so a thread per connection with
/// blocking I/O is the simplest thing that is obviously correct.
enum UnixSocket {
    static func address(_ path: String) throws -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else {
            throw FilterError(.invalidArgument, "socket path \(path) is longer than \(capacity - 1) bytes; use a shorter path")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        return addr
    }

    /// Binds and listens; the socket file gets mode 0600 (only its owner may drive the filter).
    static func listen(path: String) throws -> Int32 {
        var addr = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw FilterError(.io, "cannot create a socket: \(String(cString: strerror(errno)))") }
        // A socket file left by a dead filter would make bind fail; only remove a socket.
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                close(fd)
                throw FilterError(.invalidArgument, "\(path) exists and is not a socket; choose another path")
            }
            if probe(path) {
                close(fd)
                throw FilterError(.busy, "\(path) is in use by a running process; stop it or choose another path")
            }
            unlink(path)
        }
        let oldMask = umask(0o177)
        defer { umask(oldMask) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw FilterError(.io, "cannot bind \(path): \(e)")
        }
        chmod(path, 0o600)
        guard Glibc.listen(fd, 64) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw FilterError(.io, "cannot listen on \(path): \(e)")
        }
        return fd
    }

    /// True when something accepts connections at `path`.
    static func probe(_ path: String) -> Bool {
        guard let fd = try? connect(path: path) else { return false }
        close(fd)
        return true
    }

    static func connect(path: String) throws -> Int32 {
        var addr = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw FilterError(.io, "cannot create a socket: \(String(cString: strerror(errno)))") }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw FilterError(.unreachable, "cannot reach the filter's control endpoint at \(path): \(e); is `tessera filter serve` running with --control \(path)?")
        }
        return fd
    }

    /// Reads exactly `count` bytes; nil on a clean end of stream before the first byte.
    static func readExactly(_ fd: Int32, _ count: Int) throws -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FilterError(.io, "control connection: \(String(cString: strerror(errno)))")
            }
            if n == 0 {
                if done == 0 { return nil }
                throw FilterError(.badRequest, "control connection closed in the middle of a message (\(done) of \(count) bytes)")
            }
            done += n
        }
        return out
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FilterError(.io, "control connection: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }
}
