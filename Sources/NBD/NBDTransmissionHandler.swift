import Logging
import NIOCore
import NIOPosix

/// Serves one connection's requests after the handshake.
///
/// A small READ whose data is in the page cache is answered on the event loop
/// (`NBDExport.readIfCached` never blocks): for 4 KiB reads the hop to a pool thread and back
/// cost more than the read itself. Every other request (and a READ the cache cannot answer)
/// runs on the thread pool, so one slow disk request never holds up the event loop, other
/// connections, or the other requests of this one; replies are written as they complete (out
/// of order across cookies, which NBD allows). A reply is built only after the export call
/// returned, so the export's ordering guarantees (mark before acknowledge) hold.
///
/// Flushes are batched: replies written while handling one socket read are flushed once at
/// `channelReadComplete`, and pool completions come back through an `NBDCompletionQueue`
/// (one event loop wake-up and one flush per burst).
final class NBDTransmissionHandler: ChannelDuplexHandler {
    typealias InboundIn = NBDRequestParser.Result
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Requests, and bytes of reads and writes, in flight on the thread pool before we stop
    /// reading from the socket (back-pressure). Reading also stops while the channel is not
    /// writable (the client is not taking its replies), so replies cannot pile up either.
    static let maximumInFlight = 64
    static let maximumInFlightBytes = 128 << 20
    /// The largest READ answered on the event loop: a memory copy of this size is short enough
    /// not to delay other connections noticeably; larger reads run on the pool, in parallel.
    static let inlineReadLimit = 128 << 10

    private let session: NBDSession
    private let threadPool: NIOThreadPool
    private let logger: Logger
    private let completions = NBDCompletionQueue()
    private var inFlight = 0
    private var inFlightBytes = 0
    /// Replies were written since the last flush (flushed at channelReadComplete).
    private var flushPending = false
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

    func channelReadComplete(context: ChannelHandlerContext) {
        if flushPending {
            flushPending = false
            context.flush()
        }
        context.fireChannelReadComplete()
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
            write(NBDReply.error(error, cookie: r.cookie, structured: session.structuredReplies, allocator: allocator),
                  context: context)
            return
        }
        if r.type == NBDProtocol.Command.read, r.length <= Self.inlineReadLimit, context.channel.isWritable,
           let reply = NBDTransmission.readIfCached(r, session: session, allocator: allocator) {
            write(reply, context: context)
            return
        }
        let bytes = r.type == NBDProtocol.Command.read || r.type == NBDProtocol.Command.write ? Int(r.length) : 0
        inFlight += 1
        inFlightBytes += bytes
        let session = self.session, completions = self.completions, eventLoop = context.eventLoop
        let handler = NIOLoopBound((self, context), eventLoop: eventLoop)
        threadPool.submit { state in
            let reply: ByteBuffer
            if case .active = state {
                reply = NBDTransmission.perform(r, session: session, allocator: allocator)
            } else {
                reply = NBDReply.error(NBDError(.shutdown, "the server is shutting down"), cookie: r.cookie,
                                       structured: session.structuredReplies, allocator: allocator)
            }
            if completions.push(.init(reply: reply, bytes: bytes)) {
                eventLoop.execute {
                    let (handler, context) = handler.value
                    handler.drainCompletions(context: context)
                }
            }
        }
    }

    /// Writes a reply; the flush comes at channelReadComplete, after the rest of this read.
    private func write(_ reply: ByteBuffer, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(reply), promise: nil)
        flushPending = true
    }

    /// Sends every reply the pool finished since the last drain, with one flush.
    private func drainCompletions(context: ChannelHandlerContext) {
        let done = completions.takeAll()
        for c in done {
            inFlight -= 1
            inFlightBytes -= c.bytes
            if !closed { context.write(wrapOutboundOut(c.reply), promise: nil) }
        }
        if !closed, !done.isEmpty || flushPending {
            flushPending = false
            context.flush()
        }
        if closing {
            closeWhenIdle(context: context)
        } else {
            resumeReading(context: context)
        }
    }

    private func closeWhenIdle(context: ChannelHandlerContext) {
        guard inFlight == 0, !closed else { return }
        closed = true
        flushPending = false
        // An empty write-and-flush completes after every earlier reply left, so none is cut off.
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private var saturated: Bool {
        inFlight >= Self.maximumInFlight || inFlightBytes >= Self.maximumInFlightBytes
    }

    private func resumeReading(context: ChannelHandlerContext) {
        guard readHeld, !saturated, context.channel.isWritable else { return }
        readHeld = false
        context.read()
    }

    func read(context: ChannelHandlerContext) {
        if saturated || !context.channel.isWritable {
            readHeld = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !closing { resumeReading(context: context) }
        context.fireChannelWritabilityChanged()
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
