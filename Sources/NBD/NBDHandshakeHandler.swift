import Logging
import NIOCore
import NIOPosix

/// Sent through a connection's pipeline when the server shuts down: stop taking requests,
/// finish the ones in flight, close.
struct NBDDrainEvent: Sendable {}

/// Drives `NBDHandshake` for one connection, then replaces itself with the transmission
/// handlers. All protocol decisions are in the state machine; this class only moves bytes.
final class NBDHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: NBDHandshake
    private var pending: ByteBuffer?
    private let threadPool: NIOThreadPool
    private let budget: NBDPayloadBudget
    private let stallTimeout: TimeAmount
    private var logger: Logger
    private var done = false
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?

    init(provider: any NBDExportProvider, threadPool: NIOThreadPool, logger: Logger, timeout: TimeAmount,
         budget: NBDPayloadBudget, stallTimeout: TimeAmount) {
        machine = NBDHandshake(provider: provider)
        self.threadPool = threadPool
        self.budget = budget
        self.stallTimeout = stallTimeout
        self.logger = logger
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard timer == nil else { return }
        context.writeAndFlush(wrapOutboundOut(NBDHandshake.greeting(allocator: context.channel.allocator)), promise: nil)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            guard !handler.done else { return }
            handler.done = true
            handler.logger.info("handshake not finished in time, closing connection")
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        var incoming = unwrapInboundIn(data)
        if pending == nil { pending = incoming } else { pending!.writeBuffer(&incoming) }
        while !done, var buffer = pending {
            pending = nil
            let action = machine.process(&buffer)
            pending = buffer
            guard let action else { break }
            switch action {
            case .send(let reply):
                context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            case .sendAndClose(let reply):
                done = true
                logger.debug("client aborted the handshake")
                context.writeAndFlush(wrapOutboundOut(reply)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            case .close(let error):
                done = true
                logger.info("handshake failed, closing connection", metadata: ["error": "\(error)"])
                context.close(promise: nil)
            case .startTransmission(let reply, let session):
                done = true
                startTransmission(context: context, reply: reply, session: session)
            }
        }
        if let p = pending, p.readableBytes == 0 { pending = nil }
    }

    private func startTransmission(context: ChannelHandlerContext, reply: ByteBuffer, session: NBDSession) {
        logger.debug("transmission starts", metadata: [
            "export": "\(session.info.name)", "structured": "\(session.structuredReplies)",
            "contexts": "\(session.contexts.map(\.name))",
        ])
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
        do {
            let transmission = NBDTransmissionHandler(session: session, threadPool: threadPool, logger: logger,
                                                      budget: budget, stallTimeout: stallTimeout)
            try context.pipeline.syncOperations.addHandler(transmission, position: .after(self))
        } catch {
            logger.error("could not set up the transmission phase", metadata: ["error": "\(error)"])
            context.close(promise: nil)
            return
        }
        // Bytes that arrived behind the final option already belong to the transmission phase.
        if let leftover = pending, leftover.readableBytes > 0 {
            pending = nil
            context.fireChannelRead(NIOAny(leftover))
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is NBDDrainEvent {
            done = true
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error during handshake", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension NBDHandshakeHandler: Sendable {}
