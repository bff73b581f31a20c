import Logging
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An NBD server (fixed newstyle, structured replies, meta contexts) for the exports of one
/// provider, on a Unix socket or TCP.
///
/// Each connection runs on an event loop; small reads the page cache can answer are served
/// there, every other export call runs on a thread pool of `threads` threads, so requests of
/// one connection overlap. A misbehaving or vanished client only
/// loses its own connection.
public final class NBDServer: Sendable {
    private let provider: any NBDExportProvider
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    private let threadPool: NIOThreadPool
    private let handshakeTimeout: TimeAmount
    private let state = Mutex(State())

    private struct State {
        var listeners: [any Channel] = []
        var socketPaths: [String] = []
        var connections: [ObjectIdentifier: any Channel] = [:]
        var stopping = false
    }

    /// - Parameters:
    ///   - provider: the exports to serve.
    ///   - logger: connection events and protocol errors go here.
    ///   - threads: threads running export calls (disk I/O).
    ///   - handshakeTimeout: a connection that has not finished negotiating by then is closed,
    ///     so silent or stuck clients cannot pile up.
    public init(provider: any NBDExportProvider, logger: Logger = Logger(label: "tessera.nbd"), threads: Int = 4,
                handshakeTimeout: TimeAmount = .seconds(60)) {
        self.provider = provider
        self.logger = logger
        self.handshakeTimeout = handshakeTimeout
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        threadPool = NIOThreadPool(numberOfThreads: max(1, threads))
        threadPool.start()
    }

    /// Starts listening on a Unix socket (an existing socket file at the path is replaced).
    public func start(unixSocket path: String) async throws {
        let channel = try await bootstrap().bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        try register(listener: channel)
        state.withLock { $0.socketPaths.append(path) }
        logger.info("listening", metadata: ["socket": "\(path)"])
    }

    /// Starts listening on TCP (for example `127.0.0.1`, port 10809; port 0 picks a free one).
    /// - Returns: the bound port.
    @discardableResult
    public func start(host: String, port: Int) async throws -> Int {
        let channel = try await bootstrap().bind(host: host, port: port).get()
        try register(listener: channel)
        let bound = channel.localAddress?.port ?? port
        logger.info("listening", metadata: ["host": "\(host)", "port": "\(bound)"])
        return bound
    }

    /// Stops accepting, lets every connection finish its in-flight requests, closes them,
    /// and releases the threads. The server cannot be started again; a second call returns
    /// at once. Call it before dropping the server, or its threads stay behind.
    public func shutdown() async throws {
        let (listeners, connections, paths, first) = state.withLock { s -> ([any Channel], [any Channel], [String], Bool) in
            defer { s.stopping = true }
            return (s.listeners, Array(s.connections.values), s.socketPaths, !s.stopping)
        }
        guard first else { return }
        for l in listeners { try? await l.close() }
        // No stale socket file: a client then gets "no such file" instead of "connection refused".
        for p in paths { unlink(p) }
        for c in connections { c.pipeline.fireUserInboundEventTriggered(NBDDrainEvent()) }
        for c in connections { try? await c.closeFuture.get() }
        try await threadPool.shutdownGracefully()
        try await group.shutdownGracefully()
        logger.info("stopped")
    }

    private func register(listener: any Channel) throws {
        let stopping = state.withLock { s in
            if !s.stopping { s.listeners.append(listener) }
            return s.stopping
        }
        if stopping {
            listener.close(promise: nil)
            throw NBDError(.shutdown, "the server is shutting down; create a new NBDServer")
        }
    }

    private func bootstrap() -> ServerBootstrap {
        let provider = self.provider, threadPool = self.threadPool, logger = self.logger
        let handshakeTimeout = self.handshakeTimeout
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            // WRITE payloads are large: reading up to 1 MiB per syscall keeps the number of
            // reads, allocations and cumulation copies per request low.
            // Reading stops while the channel is not writable (the client is not taking its
            // replies); the marks leave room for a few large READ replies so that does not
            // stall a pipelining client that is keeping up.
            .childChannelOption(.writeBufferWaterMark, value: ChannelOptions.Types.WriteBufferWaterMark(low: 1 << 20, high: 4 << 20))
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: 1 << 20))
            .childChannelInitializer { [weak self] channel in
                guard let self, self.track(channel) else {
                    return channel.close()
                }
                let connectionLogger = {
                    var l = logger
                    l[metadataKey: "peer"] = "\(channel.remoteAddress.map { "\($0)" } ?? "unix")"
                    return l
                }()
                connectionLogger.debug("connection opened")
                let id = ObjectIdentifier(channel)
                channel.closeFuture.whenComplete { [weak self] _ in
                    connectionLogger.debug("connection closed")
                    self?.state.withLock { _ = $0.connections.removeValue(forKey: id) }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NBDHandshakeHandler(provider: provider, threadPool: threadPool, logger: connectionLogger,
                                        timeout: handshakeTimeout))
                }
            }
    }

    /// Records a connection so shutdown can drain it; false once the server is stopping.
    private func track(_ channel: any Channel) -> Bool {
        state.withLock { s in
            guard !s.stopping else { return false }
            s.connections[ObjectIdentifier(channel)] = channel
            return true
        }
    }
}
