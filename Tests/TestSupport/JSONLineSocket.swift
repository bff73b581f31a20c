import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A blocking client for the JSON-lines protocols QEMU speaks on a Unix socket: QMP (the
/// monitor) and QGA (the guest agent, through its chardev). Every read has a deadline, so a
/// guest that stops answering fails the test instead of hanging it.
///
/// QEMU's socket chardevs accept one client at a time: open one for an operation and close
/// it, so another client (`tessera run`'s own guest agent client) can connect in between.
public final class JSONLineSocket: @unchecked Sendable {
    public let path: String
    private var fd: Int32
    private var buffer: [UInt8] = []

    /// Connects, retrying for up to `timeout` seconds while QEMU has not created the socket yet.
    public init(path: String, timeout: Double = 10) throws {
        self.path = path
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw GuestError("socket(): errno \(errno)") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                Glibc.close(fd)
                throw GuestError("socket path too long: \(path)")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            let status = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if status == 0 {
                self.fd = fd
                return
            }
            let error = errno
            Glibc.close(fd)
            if Date() >= deadline { throw GuestError("cannot connect to \(path): errno \(error)") }
            usleep(50_000)
        }
    }

    deinit { close() }

    public func close() {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
    }

    /// Sends one JSON object and a newline.
    public func send(_ object: [String: Any]) throws {
        var data = try JSONSerialization.data(withJSONObject: object)
        data.append(UInt8(ascii: "\n"))
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw GuestError("write to \(path): errno \(errno)")
                }
                offset += n
            }
        }
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`.
    private func fill(deadline: Date) throws {
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { throw GuestError("no answer on \(path) in time") }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(min(left, 1) * 1000) + 1)
            if ready < 0 {
                if errno == EINTR { continue }
                throw GuestError("poll \(path): errno \(errno)")
            }
            if ready == 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw GuestError("read from \(path): errno \(errno)")
            }
            if n == 0 { throw GuestError("\(path) closed the connection") }
            buffer.append(contentsOf: chunk[0..<n])
            return
        }
    }

    /// Drops everything up to and including the byte `marker` (QGA's 0xFF sync delimiter).
    public func skip(through marker: UInt8, deadline: Date) throws {
        while true {
            if let i = buffer.firstIndex(of: marker) {
                buffer.removeSubrange(0...i)
                return
            }
            buffer.removeAll()
            try fill(deadline: deadline)
        }
    }

    /// The next JSON object (lines that are not a JSON object are skipped).
    public func receive(deadline: Date) throws -> [String: Any] {
        while true {
            while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Data(buffer[0..<newline])
                buffer.removeSubrange(0...newline)
                if let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] { return object }
            }
            try fill(deadline: deadline)
        }
    }
}

/// What a guest harness throws: a message that says what went wrong.
public struct GuestError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// QEMU's monitor (QMP): `stop`, `cont`, `quit`, `query-status`.
public final class QMPClient: @unchecked Sendable {
    private let socket: JSONLineSocket
    public let timeout: Double

    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    public init(path: String, timeout: Double = 30) throws {
        self.timeout = timeout
        socket = try JSONLineSocket(path: path, timeout: timeout)
        let greeting = try socket.receive(deadline: Date().addingTimeInterval(timeout))
        guard greeting["QMP"] != nil else { throw GuestError("not a QMP greeting: \(greeting)") }
        _ = try execute("qmp_capabilities")
    }

    /// Runs a command and returns its `return` value; asynchronous events are skipped.
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: Any]? = nil) throws -> Any {
        var request: [String: Any] = ["execute": command]
        if let arguments { request["arguments"] = arguments }
        try socket.send(request)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let reply = try socket.receive(deadline: deadline)
            if let error = reply["error"] { throw GuestError("QMP \(command): \(error)") }
            if let value = reply["return"] { return value }
        }
    }

    public func close() { socket.close() }
}

/// The guest agent (qemu-ga) through QEMU's chardev: a `guest-sync-delimited` first, then
/// commands. `guest-fsfreeze-freeze` flushes and freezes every mounted file system.
public final class GuestAgentClient: @unchecked Sendable {
    private let socket: JSONLineSocket
    public let timeout: Double

    /// Connects and synchronizes (stale replies of an earlier client are dropped).
    public init(path: String, timeout: Double = 60) throws {
        self.timeout = timeout
        socket = try JSONLineSocket(path: path, timeout: 10)
        let id = Int.random(in: 1..<Int(Int32.max))
        try socket.send(["execute": "guest-sync-delimited", "arguments": ["id": id]])
        let deadline = Date().addingTimeInterval(timeout)
        try socket.skip(through: 0xFF, deadline: deadline)
        while true {
            let reply = try socket.receive(deadline: deadline)
            if (reply["return"] as? Int) == id { return }
        }
    }

    /// Runs a command and returns its `return` value.
    @discardableResult
    public func execute(_ command: String, _ arguments: [String: Any]? = nil) throws -> Any {
        var request: [String: Any] = ["execute": command]
        if let arguments { request["arguments"] = arguments }
        try socket.send(request)
        let reply = try socket.receive(deadline: Date().addingTimeInterval(timeout))
        if let error = reply["error"] { throw GuestError("guest agent \(command): \(error)") }
        return reply["return"] ?? [:]
    }

    /// Sends a command that has no reply (guest-shutdown).
    public func send(_ command: String, _ arguments: [String: Any]? = nil) throws {
        var request: [String: Any] = ["execute": command]
        if let arguments { request["arguments"] = arguments }
        try socket.send(request)
    }

    /// Freezes the guest's file systems; returns how many were frozen.
    public func freeze() throws -> Int {
        guard let count = try execute("guest-fsfreeze-freeze") as? Int else { throw GuestError("guest-fsfreeze-freeze: no count") }
        return count
    }

    /// Thaws them; returns how many were thawed.
    @discardableResult
    public func thaw() throws -> Int {
        guard let count = try execute("guest-fsfreeze-thaw") as? Int else { throw GuestError("guest-fsfreeze-thaw: no count") }
        return count
    }

    /// "thawed" or "frozen".
    public func freezeStatus() throws -> String {
        (try execute("guest-fsfreeze-status") as? String) ?? "?"
    }

    public func close() { socket.close() }
}
