import Logging
import NIOCore
import TrackerControl

/// Sent through a control connection's pipeline when the server stops: finish the running
/// request, answer the queued ones `busy`, close.
struct ControlDrainEvent: Sendable {}

/// Drives `ControlConnection` for one connection: it only moves frames in and replies out,
/// runs requests through `execute`, holds reading while the machine wants no input, and
/// closes a connection that stays idle for `idleTimeout`.
final class ControlConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ControlFrame
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Runs one request off the event loop; the future brings back the whole reply (errors
    /// already turned into error replies), and fails only when the server is stopping.
    typealias Execute = @Sendable (_ request: ControlProtocol.Request, _ id: UInt32, _ payload: [UInt8],
                                   _ eventLoop: any EventLoop) -> EventLoopFuture<[UInt8]>

    private var machine = ControlConnection()
    private let execute: Execute
    private let logger: Logger
    private let idleTimeout: TimeAmount
    private var idleTimer: Scheduled<Void>?
    private var readHeld = false
    private var closed = false

    init(execute: @escaping Execute, logger: Logger, idleTimeout: TimeAmount) {
        self.execute = execute
        self.logger = logger
        self.idleTimeout = idleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armIdleTimer(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closed = true
        idleTimer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        machine.received(unwrapInboundIn(data))
        pump(context: context)
    }

    /// Bytes arrived (a whole message or part of one): the connection is not idle.
    func channelReadComplete(context: ChannelHandlerContext) {
        armIdleTimer(context: context)
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ControlDrainEvent {
            machine.drain()
            pump(context: context)
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            // The client sent everything it will: answer it all, then close.
            machine.endOfInput()
            pump(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func read(context: ChannelHandlerContext) {
        guard machine.wantsInput else {
            readHeld = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        pump(context: context)
        context.fireChannelWritabilityChanged()
    }

    /// The client is gone: a running request still finishes (it cannot be stopped halfway), the
    /// queued ones are not run, since nobody would learn their outcome.
    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        idleTimer?.cancel()
        machine.drain()
        pump(context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("control connection error, closing it", metadata: ["error": "\(error)"])
        closed = true
        context.close(promise: nil)
    }

    /// Carries out the machine's actions until it has to wait.
    private func pump(context: ChannelHandlerContext) {
        while let action = machine.next(writable: closed || context.channel.isWritable) {
            switch action {
            case .run(let request, let id, let payload):
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                execute(request, id, payload, context.eventLoop).assumeIsolated().whenComplete { result in
                    let (handler, context) = loopBound.value
                    let reply = (try? result.get()) ?? ControlReply.error(id: id, FilterError(.busy, "the filter is shutting down; this request was not run: send it again when the filter is back"))
                    handler.finished(reply, context: context)
                }
            case .reply(let bytes):
                send(bytes, context: context)
            case .replyAndClose(let bytes):
                send(bytes, context: context)
                close(context: context)
            case .close:
                close(context: context)
            }
        }
        if readHeld, machine.wantsInput, !closed {
            readHeld = false
            context.read()
        }
    }

    private func finished(_ reply: [UInt8], context: ChannelHandlerContext) {
        machine.finished()
        send(reply, context: context)
        if machine.isIdle { armIdleTimer(context: context) }
        pump(context: context)
    }

    private func send(_ bytes: [UInt8], context: ChannelHandlerContext) {
        guard !closed else { return }
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
    }

    /// Closes once every reply written so far has left.
    private func close(context: ChannelHandlerContext) {
        guard !closed else { return }
        closed = true
        idleTimer?.cancel()
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func armIdleTimer(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        guard !closed else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: idleTimeout) {
            let (handler, context) = loopBound.value
            // A running request keeps the connection; its reply re-arms the timer.
            guard !handler.closed, handler.machine.isIdle else { return }
            handler.logger.info("closing an idle control connection: nothing received for \(handler.idleTimeout.nanoseconds / 1_000_000_000) s")
            handler.closed = true
            context.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension ControlConnectionHandler: Sendable {}

/// Answers a connection over the cap with one `busy` reply and closes it.
final class ControlRefusalHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let reply: [UInt8]
    private var sent = false

    init(reply: [UInt8]) { self.reply = reply }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context: context)
        context.fireChannelActive()
    }

    /// Whatever the client sends is dropped.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func refuse(context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension ControlRefusalHandler: Sendable {}
