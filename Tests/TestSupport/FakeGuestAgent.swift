import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A QEMU guest agent's host-side socket, played by the test: like QEMU's chardev it serves
/// one client at a time, answers `guest-sync-delimited` with a 0xFF byte before the reply,
/// and keeps the freeze state the way qemu-ga does. Every command it executes is logged with
/// the time, so a test can see when the guest was frozen and thawed and by whom.
public final class FakeGuestAgent: @unchecked Sendable {
    public let path: String
    public enum Behaviour: Sendable {
        case normal
        /// guest-fsfreeze-freeze fails (a guest whose file systems cannot be frozen).
        case freezeFails
        /// Accepts connections but never answers (an agent that is not running in the guest).
        case silent
        /// The first thaw is never answered nor done (logged as `guest-fsfreeze-thaw (hung)`):
        /// a run stuck there, or killed there, must leave the thaw to its guard.
        case firstThawHangs
    }

    public struct Event: Sendable {
        public var command: String
        public var at: Date
    }

    private let behaviour: Behaviour
    private let listener: Int32
    private let state = Mutex<(frozen: Bool, log: [Event], stopped: Bool, hung: Bool)>((false, [], false, false))
    /// Bytes a previous client left unread, sent before the sync marker (the reason for it).
    private let staleBytes: String

    public init(path: String, behaviour: Behaviour = .normal, staleBytes: String = "") throws {
        self.path = path
        self.behaviour = behaviour
        self.staleBytes = staleBytes
        unlink(path)
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes.prefix(raw.count - 1))
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(listener, 8) == 0 else {
            throw CommandError(description: "fake guest agent: cannot listen on \(path): \(String(cString: strerror(errno)))")
        }
        let thread = Thread { [self] in serve() }
        thread.name = "fake-qga"
        thread.start()
    }

    public var frozen: Bool { state.withLock { $0.frozen } }
    public var log: [Event] { state.withLock { $0.log } }
    public func commands() -> [String] { log.map(\.command) }

    /// Waits until a command shows in the log.
    public func wait(for command: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if commands().contains(command) { return true }
            usleep(10_000)
        }
        return false
    }

    public func stop() {
        state.withLock { $0.stopped = true }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        unlink(path)
    }

    deinit { if !state.withLock({ $0.stopped }) { stop() } }

    /// One client at a time, as QEMU's chardev.
    private func serve() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            handle(client)
            close(client)
        }
    }

    private func handle(_ fd: Int32) {
        var buffer: [UInt8] = []
        while true {
            guard let line = readLine(fd, &buffer) else { return }
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let command = object["execute"] as? String else {
                send(fd, #"{"error":{"class":"GenericError","desc":"Invalid JSON"}}"#)
                continue
            }
            if behaviour == .silent { continue }
            if behaviour == .firstThawHangs && command == "guest-fsfreeze-thaw"
                && state.withLock({ s in defer { s.hung = true }; return !s.hung }) {
                state.withLock { $0.log.append(Event(command: command + " (hung)", at: Date())) }
                // Holds the client (and so the chardev) until it goes away.
                while readLine(fd, &buffer) != nil {}
                return
            }
            state.withLock { $0.log.append(Event(command: command, at: Date())) }
            switch command {
            case "guest-sync-delimited":
                let id = (object["arguments"] as? [String: Any])?["id"] as? Int ?? 0
                var bytes = Array(staleBytes.utf8)
                bytes.append(0xFF)
                write(fd, bytes)
                send(fd, #"{"return": \#(id)}"#)
            case "guest-fsfreeze-freeze":
                if behaviour == .freezeFails {
                    send(fd, #"{"error":{"class":"GenericError","desc":"failed to freeze /: Operation not supported"}}"#)
                } else if state.withLock({ $0.frozen }) {
                    send(fd, #"{"error":{"class":"GenericError","desc":"Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state"}}"#)
                } else {
                    state.withLock { $0.frozen = true }
                    send(fd, #"{"return": 2}"#)
                }
            case "guest-fsfreeze-thaw":
                let was = state.withLock { s in defer { s.frozen = false }; return s.frozen }
                send(fd, #"{"return": \#(was ? 2 : 0)}"#)
            case "guest-fsfreeze-status":
                send(fd, #"{"return": "\#(frozen ? "frozen" : "thawed")"}"#)
            default:
                send(fd, #"{"error":{"class":"CommandNotFound","desc":"The command \#(command) has not been found"}}"#)
            }
        }
    }

    private func readLine(_ fd: Int32, _ buffer: inout [UInt8]) -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { return nil }
            buffer += chunk[..<n]
        }
    }

    private func send(_ fd: Int32, _ json: String) { write(fd, Array((json + "\n").utf8)) }

    private func write(_ fd: Int32, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }
}
