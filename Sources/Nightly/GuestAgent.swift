import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A client of the QEMU guest agent (qemu-ga) on its host-side Unix socket: JSON lines,
/// `guest-sync-delimited` first (its reply comes after a 0xFF byte, which tells a stale reply
/// of an earlier client apart), then `guest-fsfreeze-freeze`, `-thaw` and `-status`.
///
/// QEMU's chardev accepts one client at a time, so a connection is held only for one
/// exchange: the freeze and the thaw each open their own. That leaves the socket free for the
/// thaw guard (`ThawGuard`) if this process dies while the guest is frozen.
public struct GuestAgent: Sendable {
    public let socket: String
    /// How long one exchange may take.
    public let timeout: Double

    public init(socket: String, timeout: Double = 10) {
        self.socket = socket
        self.timeout = timeout
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var description: String { message }
    }

    /// Freezes the guest's file systems. Returns how many were frozen.
    public func freeze() throws -> Int {
        try exchange("guest-fsfreeze-freeze").intValue
    }

    /// Thaws them. Returns how many were thawed.
    @discardableResult
    public func thaw() throws -> Int {
        try exchange("guest-fsfreeze-thaw").intValue
    }

    /// "frozen" or "thawed".
    public func status() throws -> String {
        try exchange("guest-fsfreeze-status").stringValue
    }

    /// One command on a fresh connection: sync, then the command; its `return`.
    func exchange(_ command: String) throws -> Reply {
        let fd = try connect()
        defer { close(fd) }
        let id = Int.random(in: 1..<Int(Int32.max))
        try send(fd, #"{"execute":"guest-sync-delimited","arguments":{"id":\#(id)}}"#)
        // Everything before the 0xFF marker is left over from an earlier client.
        var buffer: [UInt8] = []
        while true {
            let b = try readByte(fd)
            if b == 0xFF { break }
        }
        let sync = try readReply(fd, &buffer)
        guard sync.intValue == id else {
            throw Failure(message: "the guest agent at \(socket) answered the sync with \(sync.raw) instead of \(id)")
        }
        try send(fd, #"{"execute":"\#(command)"}"#)
        return try readReply(fd, &buffer)
    }

    /// A reply's `return` value, or the agent's error.
    struct Reply {
        var raw: String
        var value: Any?
        var intValue: Int { (value as? Int) ?? (value as? NSNumber)?.intValue ?? -1 }
        var stringValue: String { value as? String ?? "" }
    }

    private func readReply(_ fd: Int32, _ buffer: inout [UInt8]) throws -> Reply {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                guard !line.allSatisfy({ $0 == 0x20 || $0 == 0x0D }) else { continue }
                let raw = String(decoding: line, as: UTF8.self)
                guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
                    throw Failure(message: "the guest agent at \(socket) sent something that is not JSON: \(raw.prefix(200))")
                }
                if let error = object["error"] as? [String: Any] {
                    throw Failure(message: "the guest agent refused: \(error["desc"] ?? raw) (\(error["class"] ?? "error"))")
                }
                guard object.keys.contains("return") else { continue } // an event
                return Reply(raw: raw, value: object["return"])
            }
            buffer.append(try readByte(fd))
        }
    }

    private func connect() throws -> Int32 {
        var address: sockaddr_un
        do { address = try UnixSocketFile.address(socket) } catch {
            throw Failure(message: "\(socket): \(error.message)")
        }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(message: "cannot create a socket: \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw Failure(message: "cannot reach the guest agent at \(socket): \(e); is the VM running with a guest agent channel?")
        }
        return fd
    }

    private func send(_ fd: Int32, _ json: String) throws {
        let bytes = Array((json + "\n").utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(message: "writing to the guest agent at \(socket) failed: \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    private func readByte(_ fd: Int32) throws -> UInt8 {
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, 0)
            if n == 1 { return byte }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw Failure(message: "the guest agent at \(socket) did not answer within \(Int(timeout)) s (is qemu-ga running in the guest?)")
            }
            throw Failure(message: "the guest agent at \(socket) closed the connection")
        }
    }
}
