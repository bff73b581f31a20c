import BlockIO
import Foundation
import Logging
import NBD
import Synchronization
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// Serves the control endpoint on a Unix socket (mode 0600, created like the NBD server's:
/// `UnixSocketFile`). A peer that is neither root nor this process's user (`SO_PEERCRED`) is
/// refused with a log line.
///
/// One thread accepts; each connection gets a thread. A malformed message gets an error
/// reply and the connection is closed (a byte stream cannot be resynchronised); the server
/// and its other connections carry on.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlProtocol.Request, [UInt8]) throws -> [UInt8]

    public let path: String
    private let handler: Handler
    private let logger: Logger
    private let listener: Mutex<Int32> = Mutex(-1)
    private let identity: Mutex<UnixSocketFile.Identity?> = Mutex(nil)
    private let stopped = Mutex(false)
    private let connections = Mutex<Set<Int32>>([])

    public init(path: String, logger: Logger, handler: @escaping Handler) {
        self.path = path
        self.logger = logger
        self.handler = handler
    }

    public func start() throws {
        let (fd, file) = try UnixSocket.listen(path: path)
        listener.withLock { $0 = fd }
        identity.withLock { $0 = file }
        let thread = Thread { [self] in acceptLoop(fd) }
        thread.name = "control-accept"
        thread.start()
    }

    /// Stops accepting, closes open connections and removes the socket file.
    public func stop() {
        stopped.withLock { $0 = true }
        let fd = listener.withLock { fd -> Int32 in
            let old = fd
            fd = -1
            return old
        }
        if fd >= 0 {
            // Removed while still listening, so it cannot be a successor's socket.
            if let file = identity.withLock({ $0 }) { UnixSocketFile.remove(path, ifStill: file) }
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
        for c in connections.withLock({ $0 }) { shutdown(c, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop(_ fd: Int32) {
        while !stopped.withLock({ $0 }) {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if stopped.withLock({ $0 }) { return }
                logger.warning("control endpoint: accept failed: \(String(cString: strerror(errno)))")
                usleep(100_000)
                continue
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let peer = UnixSocketFile.peer(of: client)
            guard let peer, UnixSocketFile.mayConnect(peer) else {
                logger.warning("control endpoint: \(UnixSocketFile.refusal(peer, socket: path))")
                close(client)
                continue
            }
            connections.withLock { _ = $0.insert(client) }
            let thread = Thread { [self] in
                serve(client)
                connections.withLock { _ = $0.remove(client) }
                close(client)
            }
            thread.name = "control-connection"
            thread.start()
        }
    }

    private func serve(_ fd: Int32) {
        while true {
            let headerBytes: [UInt8]
            do {
                guard let h = try ControlSocket.readExactly(fd, ControlProtocol.headerSize) else { return }
                headerBytes = h
            } catch {
                logger.info("control endpoint: \(error)")
                return
            }
            guard let header = try? ControlProtocol.Header(parsing: headerBytes) else { return }
            guard header.magic == ControlProtocol.requestMagic else {
                reply(fd, id: header.id, error: FilterError(.badRequest, "not a control request (bad magic 0x\(String(header.magic, radix: 16))); this socket speaks the Tessera control protocol v1, see docs/CONTROL.md"))
                return
            }
            guard header.version == ControlProtocol.version else {
                reply(fd, id: header.id, error: FilterError(.unsupportedVersion, "control protocol version \(header.version) is not supported; this filter speaks version \(ControlProtocol.version)"))
                return
            }
            guard header.length <= ControlProtocol.maxRequestPayload else {
                reply(fd, id: header.id, error: FilterError(.badRequest, "request payload of \(header.length) bytes is over the \(ControlProtocol.maxRequestPayload)-byte limit"))
                return
            }
            let payload: [UInt8]
            do {
                payload = try ControlSocket.readExactly(fd, Int(header.length)) ?? []
                if payload.count != Int(header.length) { return }
            } catch {
                logger.info("control endpoint: \(error)")
                return
            }
            guard let request = ControlProtocol.Request(rawValue: header.number) else {
                // The payload was consumed, so the stream is still in step: keep the connection.
                reply(fd, id: header.id, error: FilterError(.unknownRequest, "unknown request number \(header.number); known: 1 ATTACH, 2 DETACH, 3 STATUS, 4 CHECKPOINT, 5 QUERY_CHANGES, 6 RELEASE, 7 RESET"))
                continue
            }
            do {
                let body = try handler(request, payload)
                let out = ControlProtocol.Header(magic: ControlProtocol.responseMagic, number: 0, id: header.id, length: UInt32(body.count))
                try ControlSocket.writeAll(fd, out.bytes + body)
            } catch let error as FilterError {
                reply(fd, id: header.id, error: error)
            } catch {
                reply(fd, id: header.id, error: FilterError(.io, "\(error)"))
            }
        }
    }

    private func reply(_ fd: Int32, id: UInt32, error: FilterError) {
        let body = ControlProtocol.encode(ControlProtocol.ErrorReply(error: error.message, code: error.code.rawValue))
        let header = ControlProtocol.Header(magic: ControlProtocol.responseMagic,
                                            number: ControlProtocol.statusNumber(error.code), id: id, length: UInt32(body.count))
        try? ControlSocket.writeAll(fd, header.bytes + body)
    }
}
