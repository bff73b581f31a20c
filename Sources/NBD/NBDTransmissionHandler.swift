import Logging
import NIOCore
import NIOPosix

/// Serves one connection's requests after the handshake.
///
/// Export calls run on the thread pool so one slow disk request never holds up the event
/// loop or the other requests of the same connection; replies are written as they complete
/// (out of order across cookies, which NBD allows). A reply is built only after the export
/// call returned, so the export's ordering guarantees (mark before acknowledge) hold.
final class NBDTransmissionHandler: ChannelDuplexHandler {
    typealias InboundIn = NBDRequestParser.Result
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Requests, and bytes of reads and writes, in flight before we stop reading from the
    /// socket (back-pressure): a client can never make us buffer more than this.
    static let maximumInFlight = 64
    static let maximumInFlightBytes = 128 << 20

    private let session: NBDSession
    private let threadPool: NIOThreadPool
    private let logger: Logger
    private var inFlight = 0
    private var inFlightBytes = 0
    /// DISC received, the server drains, or the stream broke: take no more requests.
    private var closing = false
    private var closed = false
    private var readHeld = false

    init(session: NBDSession, threadPool: NIOThreadPool, logger: Logger) {
        self.session = session
        self.threadPool = threadPool
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        switch unwrapInboundIn(data) {
        case .needMoreData:
            return
        case .oversizedWrite(let r):
            // The payload cannot be skipped reliably, so after the EINVAL reply the stream is over.
            logger.info("oversized WRITE, closing connection", metadata: ["length": "\(r.length)"])
            closing = true
            let reply = NBDReply.error(NBDError(.invalid, "WRITE of \(r.length) bytes exceeds the maximum of \(NBDProtocol.maximumPayload)"),
                                       cookie: r.cookie, structured: session.structuredReplies, allocator: context.channel.allocator)
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            closeWhenIdle(context: context)
        case .request(let r):
            handle(r, context: context)
        }
    }

    private func handle(_ r: NBDRequest, context: ChannelHandlerContext) {
        if r.type == NBDProtocol.Command.disconnect {
            logger.debug("client disconnects")
            closing = true
            closeWhenIdle(context: context)
            return
        }
        let allocator = context.channel.allocator
        if let error = NBDTransmission.validate(r, session: session) {
            logger.debug("request refused", metadata: ["type": "\(r.type)", "error": "\(error)"])
            context.writeAndFlush(wrapOutboundOut(NBDReply.error(error, cookie: r.cookie, structured: session.structuredReplies,
                                                                  allocator: allocator)), promise: nil)
            return
        }
        let bytes = r.type == NBDProtocol.Command.read || r.type == NBDProtocol.Command.write ? Int(r.length) : 0
        inFlight += 1
        inFlightBytes += bytes
        let session = self.session
        threadPool.runIfActive(eventLoop: context.eventLoop) {
            NBDTransmission.perform(r, session: session, allocator: allocator)
        }.assumeIsolated().whenComplete { result in
            self.inFlight -= 1
            self.inFlightBytes -= bytes
            let reply: ByteBuffer
            switch result {
            case .success(let b): reply = b
            case .failure:
                reply = NBDReply.error(NBDError(.shutdown, "the server is shutting down"), cookie: r.cookie,
                                       structured: session.structuredReplies, allocator: allocator)
            }
            if !self.closed { context.writeAndFlush(self.wrapOutboundOut(reply), promise: nil) }
            if self.closing {
                self.closeWhenIdle(context: context)
            } else if self.readHeld && !self.saturated {
                self.readHeld = false
                context.read()
            }
        }
    }

    private func closeWhenIdle(context: ChannelHandlerContext) {
        guard inFlight == 0, !closed else { return }
        closed = true
        // An empty write-and-flush completes after every earlier reply left, so none is cut off.
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private var saturated: Bool {
        inFlight >= Self.maximumInFlight || inFlightBytes >= Self.maximumInFlightBytes
    }

    func read(context: ChannelHandlerContext) {
        if saturated {
            readHeld = true
            return
        }
        context.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is NBDDrainEvent {
            closing = true
            closeWhenIdle(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let e = error as? NBDError {
            logger.info("protocol error, closing connection", metadata: ["error": "\(e)"])
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
        }
        closing = true
        closed = true
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension NBDTransmissionHandler: Sendable {}
