import BlockIO
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
///
/// Who can connect: a Unix socket file is created with mode 0600 and never replaces a live
/// server's socket (`UnixSocketFile`), and a Unix-socket peer must be root or this process's
/// user (`SO_PEERCRED`). TCP has no authentication, so it listens on loopback only unless the
/// caller allows remote clients.
public final class NBDServer: Sendable {
    /// The default `payloadBudget`: 256 MiB, eight largest WRITEs.
    public static let defaultPayloadBudget = 256 << 20

    private let provider: any NBDExportProvider
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    private let threadPool: NIOThreadPool
    private let handshakeTimeout: TimeAmount
    private let budget: NBDPayloadBudget
    private let stallTimeout: TimeAmount
    private let state = Mutex(State())

    private struct State {
        var listeners: [any Channel] = []
        var socketFiles: [(path: String, identity: UnixSocketFile.Identity)] = []
        var connections: [ObjectIdentifier: any Channel] = [:]
        var stopping = false
    }

    /// - Parameters:
    ///   - provider: the exports to serve.
    ///   - logger: connection events and protocol errors go here.
    ///   - threads: threads running export calls (disk I/O).
    ///   - handshakeTimeout: a connection that has not finished negotiating by then is closed,
    ///     so silent or stuck clients cannot pile up.
    ///   - payloadBudget: the bytes of WRITE payloads all connections together may hold, from
    ///     the header until the write is done (at least 32 MiB, the largest WRITE). A
    ///     connection that would go over waits, without reading, in arrival order.
    ///   - payloadStallTimeout: while connections wait for the budget, one that has held a
    ///     reservation this long for a WRITE it has still not received whole is closed.
    public init(provider: any NBDExportProvider, logger: Logger = Logger(label: "tessera.nbd"), threads: Int = 4,
                handshakeTimeout: TimeAmount = .seconds(60), payloadBudget: Int = NBDServer.defaultPayloadBudget,
                payloadStallTimeout: Duration = .seconds(30)) {
        self.provider = provider
        self.logger = logger
        self.handshakeTimeout = handshakeTimeout
        budget = NBDPayloadBudget(capacity: payloadBudget)
        let (seconds, attoseconds) = payloadStallTimeout.components
        stallTimeout = .nanoseconds(max(1, seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        threadPool = NIOThreadPool(numberOfThreads: max(1, threads))
        threadPool.start()
    }

    /// The server's event loop, lent to other servers of the same process (the filter's control
    /// endpoint): they must stop before `shutdown()`, which ends it.
    public var eventLoopGroup: any EventLoopGroup { group }

    /// Starts listening on a Unix socket, created with mode 0600.
    ///
    /// - Throws: `NBDError(.addressInUse)` when a live server listens on `path` (it is left
    ///   alone); `.invalid` when `path` is taken by a file that is not a socket, or is too long.
    ///   A socket file nobody listens on (left by a killed server) is replaced.
    public func start(unixSocket path: String) async throws {
        let socket: (fd: Int32, identity: UnixSocketFile.Identity)
        do {
            socket = try UnixSocketFile.listen(path: path)
        } catch {
            switch error.kind {
            case .inUse: throw NBDError(.addressInUse, error.message)
            case .notASocket, .invalidPath: throw NBDError(.invalid, error.message)
            case .system: throw NBDError(.io, error.message)
            }
        }
        let channel: any Channel
        do {
            channel = try await bootstrap(checkPeer: path).withBoundSocket(socket.fd).get()
        } catch {
            close(socket.fd)
            UnixSocketFile.remove(path, ifStill: socket.identity)
            throw error
        }
        do {
            try register(listener: channel)
        } catch {
            UnixSocketFile.remove(path, ifStill: socket.identity)
            throw error
        }
        state.withLock { $0.socketFiles.append((path, socket.identity)) }
        logger.info("listening", metadata: ["socket": "\(path)"])
    }

    /// Starts listening on TCP (for example `127.0.0.1`, port 10809; port 0 picks a free one).
    ///
    /// NBD over TCP has no authentication and no encryption: whoever reaches the port can read
    /// and write every export. So `host` must be a loopback address (127.0.0.0/8, `::1`, or a
    /// name resolving to one, such as `localhost`) unless `allowRemote` is true. Loopback is
    /// still open to every local user; the Unix socket is the private way in.
    /// - Returns: the bound port.
    /// - Throws: `NBDError(.permission)` for a non-loopback address without `allowRemote`.
    @discardableResult
    public func start(host: String, port: Int, allowRemote: Bool = false) async throws -> Int {
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw NBDError(.invalid, "cannot resolve \(host): \(error); give an IP address such as 127.0.0.1")
        }
        if !allowRemote, !Self.isLoopback(address) {
            throw NBDError(.permission, "\(host) (\(address.ipAddress ?? "?")) is not a loopback address: NBD has no authentication, so anyone who can reach it could read and write the exports; listen on 127.0.0.1 or ::1, or allow remote clients explicitly (tessera: --tcp-allow-remote) on a network you trust")
        }
        let channel = try await bootstrap(checkPeer: nil).bind(to: address).get()
        try register(listener: channel)
        let bound = channel.localAddress?.port ?? port
        logger.info("listening", metadata: ["host": "\(host)", "port": "\(bound)"])
        return bound
    }

    /// 127.0.0.0/8, ::1, or an IPv4-mapped 127.x address.
    static func isLoopback(_ address: SocketAddress) -> Bool {
        guard let ip = address.ipAddress else { return false }
        switch address.protocol {
        case .inet:
            var b = [UInt8](repeating: 0, count: 4)
            guard inet_pton(AF_INET, ip, &b) == 1 else { return false }
            return b[0] == 127
        case .inet6:
            var b = [UInt8](repeating: 0, count: 16)
            guard inet_pton(AF_INET6, ip, &b) == 1 else { return false }
            if b == [UInt8](repeating: 0, count: 15) + [1] { return true }
            return b[0..<10].allSatisfy { $0 == 0 } && b[10] == 0xff && b[11] == 0xff && b[12] == 127
        default:
            return false
        }
    }

    /// Stops accepting, lets every connection finish its in-flight requests, closes them,
    /// and releases the threads. The server cannot be started again; a second call returns
    /// at once. Call it before dropping the server, or its threads stay behind.
    public func shutdown() async throws {
        let (listeners, connections, files, first) = state.withLock {
            s -> ([any Channel], [any Channel], [(path: String, identity: UnixSocketFile.Identity)], Bool) in
            defer { s.stopping = true }
            return (s.listeners, Array(s.connections.values), s.socketFiles, !s.stopping)
        }
        guard first else { return }
        // No stale socket file: a client then gets "no such file" instead of "connection refused".
        // Removed while still listening, so no new server can have replaced it yet.
        for f in files { UnixSocketFile.remove(f.path, ifStill: f.identity) }
        for l in listeners { try? await l.close() }
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

    /// - Parameter checkPeer: for a Unix socket, its path: each peer's credentials are checked.
    private func bootstrap(checkPeer socketPath: String?) -> ServerBootstrap {
        let provider = self.provider, threadPool = self.threadPool, logger = self.logger
        let handshakeTimeout = self.handshakeTimeout, budget = self.budget, stallTimeout = self.stallTimeout
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
                let setUp: @Sendable () throws -> Void = {
                    try channel.pipeline.syncOperations.addHandler(
                        NBDHandshakeHandler(provider: provider, threadPool: threadPool, logger: connectionLogger,
                                            timeout: handshakeTimeout, budget: budget, stallTimeout: stallTimeout))
                }
                guard let socketPath else { return channel.eventLoop.makeCompletedFuture { try setUp() } }
                return PeerCredentials.admit(channel, socket: socketPath, logger: logger, setUp: setUp)
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

extension NBDServer {
    /// Parses a `--tcp` value: `HOST:PORT`, or `[IPV6]:PORT`.
    package static func parseTCPAddress(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            return nil  // an IPv6 address needs brackets: [::1]:10809
        }
        return host.isEmpty ? nil : (host, port)
    }

    /// `nbd://HOST:PORT/EXPORT`, with brackets around an IPv6 host.
    package static func tcpURI(host: String, port: Int, export: String) -> String {
        "nbd://\(host.contains(":") ? "[\(host)]" : host):\(port)/\(export)"
    }
}
