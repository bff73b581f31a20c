import BlockIO
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// The one check every Unix-socket server of Tessera makes of a new connection (the NBD
/// server, the filter's control endpoint): the peer's credentials (`SO_PEERCRED`) must be
/// root's or this process's user's. A refused peer gets a log line and a closed connection,
/// before a byte of the protocol is read.
package enum PeerCredentials {
    /// Runs `setUp` on the channel's event loop if its peer may connect; closes it otherwise.
    /// - Parameter label: how log lines name the server ("control endpoint: ...").
    package static func admit(_ channel: any Channel, socket path: String, logger: Logger, label: String = "",
                              setUp: @escaping @Sendable () throws -> Void) -> EventLoopFuture<Void> {
        let prefix = label.isEmpty ? "" : "\(label): "
        guard let options = channel as? any SocketOptionProvider else {
            logger.warning("\(prefix)\(UnixSocketFile.refusal(nil, socket: path))")
            return channel.close()
        }
        let credentials: EventLoopFuture<UnixSocketFile.RawCredentials> = options.unsafeGetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: SO_PEERCRED))
        return credentials.flatMap { raw in
            let peer = UnixSocketFile.Peer(raw)
            guard UnixSocketFile.mayConnect(peer) else {
                logger.warning("\(prefix)\(UnixSocketFile.refusal(peer, socket: path))")
                return channel.close()
            }
            return channel.eventLoop.makeCompletedFuture { try setUp() }
        }.flatMapError { error in
            logger.warning("\(prefix)\(UnixSocketFile.refusal(nil, socket: path)) (\(error))")
            return channel.close()
        }
    }
}
