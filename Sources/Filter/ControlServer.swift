import BlockIO
import Logging
import NBD
import NIOCore
import NIOPosix
import Synchronization
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// Serves the control endpoint (docs/CONTROL.md) on a Unix socket, on event loops like the NBD
/// server: a connection costs no thread, however long it stays open.
///
/// - **Who.** The socket is created by `UnixSocketFile` (mode 0600, never a live server's path,
///   a stale socket replaced), and a peer that is neither root nor this process's user
///   (`SO_PEERCRED`) is closed without a byte, with a log line.
/// - **How many.** At most `maximumConnections` connections are served at once; one more gets
///   a `busy` reply saying so and is closed (and a log line). A connection that sends nothing
///   for `idleTimeout` while no request of its own runs (idle, or stuck in the middle of a
///   message) is closed, so forgotten clients do not hold the places.
/// - **Requests.** Bytes are cut into messages by `ControlFrameDecoder` and each connection's
///   messages are handled in order by `ControlConnection` (one request at a time per
///   connection, replies in order). Requests block (a CHECKPOINT waits for a running release, a
///   RELEASE merges an overlay for seconds), so they run on thread pools, never on the event
///   loop: STATUS and QUERY_CHANGES on their own small pool, so they are answered while
///   checkpoints and releases wait or work on the other.
/// - **Errors.** Whatever a request throws becomes a status and a message in one place,
///   `WireErrors.control`; a cause the client does not see is logged.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlProtocol.Request, [UInt8]) throws -> [UInt8]

    public static let defaultMaximumConnections = 64
    public static let defaultIdleTimeout: Duration = .seconds(300)

    public let path: String
    private let handler: Handler
    private let logger: Logger
    private let group: any EventLoopGroup
    /// The group was made here (and is shut down here), not lent by the NBD server.
    private let ownsGroup: Bool
    /// ATTACH, DETACH, CHECKPOINT, RELEASE, RESET: they may wait or work for seconds.
    private let pool: NIOThreadPool
    /// STATUS and QUERY_CHANGES: they never wait for a release.
    private let queryPool: NIOThreadPool
    private let maximumConnections: Int
    private let idleTimeout: TimeAmount
    private let state = Mutex(State())

    private struct State {
        var listener: (any Channel)?
        var socketFile: UnixSocketFile.Identity?
        /// Every open connection, served or being refused: shutdown waits for all of them.
        var connections: [ObjectIdentifier: any Channel] = [:]
        var served = 0
        var stopping = false
    }

    /// - Parameters:
    ///   - path: the socket file.
    ///   - group: the event loops to serve on, typically the NBD server's (`NBDServer.eventLoopGroup`);
    ///     it must outlive `stop()`. Without one the server makes (and ends) its own single loop.
    ///   - threads: threads for requests that may block (ATTACH, DETACH, CHECKPOINT, RELEASE,
    ///     RESET); STATUS and QUERY_CHANGES have two threads of their own.
    ///   - maximumConnections: connections served at once; more are refused with `busy`.
    ///   - idleTimeout: a connection that sends nothing for this long while none of its
    ///     requests runs is closed.
    ///   - handler: runs one request and returns the reply's JSON; whatever it throws is mapped
    ///     to the wire by `WireErrors.control`.
    public init(path: String, logger: Logger, group: (any EventLoopGroup)? = nil, threads: Int = 4,
                maximumConnections: Int = ControlServer.defaultMaximumConnections,
                idleTimeout: Duration = ControlServer.defaultIdleTimeout, handler: @escaping Handler) {
        self.path = path
        self.logger = logger
        self.handler = handler
        if let group {
            self.group = group
            ownsGroup = false
        } else {
            self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            ownsGroup = true
        }
        pool = NIOThreadPool(numberOfThreads: max(1, threads))
        queryPool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        queryPool.start()
        self.maximumConnections = max(1, maximumConnections)
        self.idleTimeout = TimeAmount(idleTimeout)
    }

    /// Starts listening on `path`.
    /// - Throws: `FilterError.busy` when a live server listens there (it is left alone),
    ///   `.invalidArgument` when the path is taken by a file that is not a socket or is too
    ///   long, `.io` when a system call fails. A socket file nobody listens on is replaced.
    public func start() async throws {
        let socket: (fd: Int32, identity: UnixSocketFile.Identity)
        do {
            socket = try UnixSocketFile.listen(path: path, backlog: 64)
        } catch {
            switch error.kind {
            case .inUse: throw FilterError(.busy, error.message, cause: error)
            case .notASocket, .invalidPath: throw FilterError(.invalidArgument, error.message, cause: error)
            case .system: throw FilterError(.io, error.message, cause: error)
            }
        }
        let channel: any Channel
        do {
            channel = try await bootstrap().withBoundSocket(socket.fd).get()
        } catch {
            close(socket.fd)
            UnixSocketFile.remove(path, ifStill: socket.identity)
            throw FilterError(.io, "cannot serve the control endpoint on \(path): \(error)", cause: error)
        }
        let stopping = state.withLock { s in
            if !s.stopping {
                s.listener = channel
                s.socketFile = socket.identity
            }
            return s.stopping
        }
        if stopping {
            UnixSocketFile.remove(path, ifStill: socket.identity)
            try? await channel.close()
            throw FilterError(.busy, "the control server is stopping; make a new one")
        }
    }

    /// Stops accepting, lets each connection's running request finish and answers it (queued
    /// ones get `busy`), closes every connection, removes the socket file if it is still ours,
    /// and ends the threads. A second call returns at once.
    public func stop() async {
        let (listener, file, connections, first) = state.withLock { s in
            defer { s.stopping = true }
            return (s.listener, s.socketFile, Array(s.connections.values), !s.stopping)
        }
        guard first else { return }
        // Every connection is told first (new ones are refused from now on): by the time the
        // socket file is gone, no queued request will start any more.
        for c in connections {
            try? await c.eventLoop.submit { c.pipeline.fireUserInboundEventTriggered(ControlDrainEvent()) }.get()
        }
        // Removed while still listening, so it cannot be a successor's socket.
        if let file { UnixSocketFile.remove(path, ifStill: file) }
        try? await listener?.close()
        for c in connections { try? await c.closeFuture.get() }
        try? await pool.shutdownGracefully()
        try? await queryPool.shutdownGracefully()
        if ownsGroup { try? await group.shutdownGracefully() }
    }

    private func bootstrap() -> ServerBootstrap {
        let path = self.path, logger = self.logger
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            // A client may send its requests and shut its side down: it still gets every reply.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.writeBufferWaterMark, value: ChannelOptions.Types.WriteBufferWaterMark(low: 64 << 10, high: 256 << 10))
            .childChannelInitializer { [weak self] channel in
                guard let self else { return channel.close() }
                return PeerCredentials.admit(channel, socket: path, logger: logger, label: "control endpoint") {
                    try self.admit(channel)
                }
            }
    }

    /// Sets up a connection whose peer may connect: served while under the cap, refused above it.
    private func admit(_ channel: any Channel) throws {
        let id = ObjectIdentifier(channel)
        let admission = state.withLock { s -> Bool? in
            guard !s.stopping else { return nil }
            s.connections[id] = channel
            guard s.served < maximumConnections else { return false }
            s.served += 1
            return true
        }
        guard let admission else {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [weak self] _ in
            self?.state.withLock { s in
                s.connections.removeValue(forKey: id)
                if admission { s.served -= 1 }
            }
        }
        let sync = channel.pipeline.syncOperations
        guard admission else {
            logger.warning("control endpoint: refused a control connection on \(path): \(maximumConnections) connections are open, the most it serves at once")
            let reply = ControlReply.error(id: 0, FilterError(.busy, "the control endpoint \(path) already serves \(maximumConnections) connections, the most it serves at once; close clients that are done (idle ones are closed after \(idleTimeout.nanoseconds / 1_000_000_000) s) and try again"))
            try sync.addHandler(ControlRefusalHandler(reply: reply))
            return
        }
        let execute: ControlConnectionHandler.Execute = { [handler, pool, queryPool, logger] request, id, payload, eventLoop in
            let runner = request == .status || request == .queryChanges ? queryPool : pool
            return runner.runIfActive(eventLoop: eventLoop) {
                do {
                    return ControlReply.success(id: id, body: try handler(request, payload))
                } catch {
                    let wire = WireErrors.control(error)
                    if wire.code == .io {
                        logger.warning("control request \(request) failed: \(wire.message)\(wire.cause.map { " (cause: \(type(of: $0)): \($0))" } ?? "")")
                    } else {
                        logger.debug("control request \(request) refused: \(wire.code.rawValue): \(wire.message)")
                    }
                    return ControlReply.error(id: id, wire)
                }
            }
        }
        try sync.addHandler(ByteToMessageHandler(ControlFrameDecoder()))
        try sync.addHandler(ControlConnectionHandler(execute: execute, logger: logger, idleTimeout: idleTimeout))
    }
}
