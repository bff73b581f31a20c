import BlockIO
#if canImport(Glibc)
import Glibc
#endif

/// Blocking I/O on a control socket: the client's side of the control endpoint (a few small
/// messages per backup, one request at a time).
package enum ControlSocket {
    package static func connect(path: String) throws -> Int32 {
        var addr: sockaddr_un
        do { addr = try UnixSocketFile.address(path) } catch { throw FilterError(.invalidArgument, error.message) }
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

    /// Whether the other side has closed the connection (end of stream or reset), without
    /// waiting and without consuming anything: bytes waiting to be read mean it has not.
    package static func closedByPeer(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 0) == 1 else { return false }
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
    }

    /// Reads exactly `count` bytes; nil on a clean end of stream before the first byte.
    package static func readExactly(_ fd: Int32, _ count: Int) throws -> [UInt8]? {
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

    package static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
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
