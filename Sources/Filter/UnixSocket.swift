import BlockIO
import NBD
#if canImport(Glibc)
import Glibc
#endif

/// Minimal blocking Unix-domain stream sockets for the control endpoint.
///
/// The endpoint carries a few small requests per backup, so a thread per connection with
/// blocking I/O is the simplest thing that is obviously correct.
enum UnixSocket {
    static func address(_ path: String) throws -> sockaddr_un {
        do {
            return try UnixSocketFile.address(path)
        } catch {
            throw FilterError(.invalidArgument, error.message)
        }
    }

    /// Binds and listens with the NBD server's implementation (`UnixSocketFile`): mode 0600,
    /// never a live server's path, only a stale socket replaced, never another kind of file.
    static func listen(path: String) throws -> (fd: Int32, identity: UnixSocketFile.Identity) {
        do {
            return try UnixSocketFile.listen(path: path, backlog: 64)
        } catch {
            switch error.kind {
            case .inUse: throw FilterError(.busy, error.message)
            case .notASocket, .invalidPath: throw FilterError(.invalidArgument, error.message)
            case .system: throw FilterError(.io, error.message)
            }
        }
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
