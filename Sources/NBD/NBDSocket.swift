#if canImport(Glibc)
import Glibc
#endif

/// A blocking stream socket for the client: connect, send all, receive exactly.
final class NBDSocket {
    private var fd: Int32

    private init(fd: Int32) { self.fd = fd }

    deinit { close() }

    static func connect(_ endpoint: NBDURI.Endpoint) throws -> NBDSocket {
        switch endpoint {
        case .unix(let path): return try connectUnix(path)
        case .tcp(let host, let port): return try connectTCP(host: host, port: port)
        }
    }

    private static func connectUnix(_ path: String) throws -> NBDSocket {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else {
            throw NBDError(.connection, "socket path \(path) is longer than \(capacity - 1) bytes; use a shorter path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NBDError(.connection, "socket(): \(errnoText())") }
        let s = NBDSocket(fd: fd)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            throw NBDError(.connection, "cannot connect to \(path): \(errnoText()); is the NBD server running?")
        }
        return s
    }

    private static func connectTCP(host: String, port: Int) throws -> NBDSocket {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw NBDError(.connection, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var lastError = "no addresses"
        var current: UnsafeMutablePointer<addrinfo>? = first
        while let ai = current {
            current = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), ai.pointee.ai_protocol)
            if fd < 0 { lastError = errnoText(); continue }
            let s = NBDSocket(fd: fd)
            if Glibc.connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 {
                var one: Int32 = 1
                setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return s
            }
            lastError = errnoText()
        }
        throw NBDError(.connection, "cannot connect to \(host):\(port): \(lastError); is the NBD server running?")
    }

    func send(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            guard fd >= 0, let base = bytes.baseAddress else { throw NBDError(.connection, "the connection is closed") }
            let n = Glibc.send(fd, base + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR { continue }
                throw NBDError(.connection, "send failed: \(Self.errnoText())")
            }
            done += n
        }
    }

    func send(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try send($0) }
    }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            guard fd >= 0, let base = buffer.baseAddress else { throw NBDError(.connection, "the connection is closed") }
            let n = recv(fd, base + done, buffer.count - done, 0)
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    throw NBDError(.connection, "the server did not answer in time; check that it is alive, or raise the timeout")
                }
                throw NBDError(.connection, "receive failed: \(Self.errnoText())")
            }
            if n == 0 { throw NBDError(.connection, "the server closed the connection") }
            done += n
        }
    }

    func receive(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try receive(into: $0) }
        return out
    }

    /// Makes a blocked receive fail after `seconds` instead of waiting forever (SO_RCVTIMEO).
    func setReceiveTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Makes a blocked send fail after `seconds` (SO_SNDTIMEO).
    func setSendTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }
}
