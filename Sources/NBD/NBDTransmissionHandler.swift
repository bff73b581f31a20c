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
///
/// WRITE payloads are paid for from the server's `NBDPayloadBudget`: the header reserves the
/// whole length before a payload byte is taken; the reservation is returned when the write's
/// export call returned. A connection whose reservation must wait stops reading (its bytes
/// stay in the kernel). One that holds a reservation for a WRITE still incomplete
/// `stallTimeout` after it got it, while other connections wait, is closed: a client cannot
/// hold the budget hostage by never sending its last byte (or trickling it).
final class NBDTransmissionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
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
    private var parser = NBDRequestParser(gatePayloads: true)
    /// Bytes read but not parsed yet.
    private var pending: ByteBuffer?
    private let budget: NBDPayloadBudget
    private let budgetID: UInt64
    private let stallTimeout: TimeAmount
    /// Reserved for the WRITE being received (or waited for); 0 when none.
    private var reservedForIncomplete = 0
    /// The WRITE header whose reservation is queued: reading stops until it is granted.
    private var waitingForBudget: NBDRequest?
    private var stallCheck: Scheduled<Void>?
    private var inFlight = 0
    private var inFlightBytes = 0
    /// Replies were written since the last flush (flushed at channelReadComplete).
    private var flushPending = false
    /// DISC received, the server drains, or the stream broke: take no more requests.
    private var closing = false
    private var closed = false
    private var readHeld = false

    init(session: NBDSession, threadPool: NIOThreadPool, logger: Logger, budget: NBDPayloadBudget, stallTimeout: TimeAmount) {
        self.session = session
        self.threadPool = threadPool
        self.logger = logger
        self.budget = budget
        self.stallTimeout = stallTimeout
        budgetID = budget.makeID()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        var incoming = unwrapInboundIn(data)
        if pending == nil || pending!.readableBytes == 0 {
            pending = incoming
        } else {
            pending!.writeBuffer(&incoming)
        }
        parsePending(context: context)
    }

    /// Parses and handles every complete request in `pending`, stopping at a WRITE header that
    /// must wait for budget.
    private func parsePending(context: ChannelHandlerContext) {
        while !closing, waitingForBudget == nil, var buffer = pending, buffer.readableBytes > 0 {
            pending = nil
            let result: NBDRequestParser.Result
            do {
                result = try parser.next(&buffer)
            } catch {
                logger.info("protocol error, closing connection", metadata: ["error": "\(error)"])
                closing = true
                closed = true
                context.close(promise: nil)
                return
            }
            pending = buffer
            switch result {
            case .needMoreData:
                if parser.incompleteWrite == nil { return }  // a partial header: wait for more
            case .oversizedWrite(let r):
                // The payload cannot be skipped reliably, so after the EINVAL reply the stream is over.
                logger.info("oversized WRITE, closing connection", metadata: ["length": "\(r.length)"])
                closing = true
                let reply = NBDReply.error(NBDError(.invalid, "WRITE of \(r.length) bytes exceeds the maximum of \(NBDProtocol.maximumPayload)"),
                                           cookie: r.cookie, structured: session.structuredReplies, allocator: context.channel.allocator)
                context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
                closeWhenIdle(context: context)
            case .writeHeader(let r):
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                let eventLoop = context.eventLoop
                let granted = budget.reserve(Int(r.length), for: budgetID) {
                    eventLoop.execute {
                        let (handler, context) = loopBound.value
                        handler.budgetGranted(context: context)
                    }
                }
                if granted {
                    startPayload(r, context: context)
                } else {
                    waitingForBudget = r
                    compactPending(allocator: context.channel.allocator)
                    logger.debug("waiting for payload budget", metadata: ["length": "\(r.length)"])
                }
            case .request(let r):
                if r.type == NBDProtocol.Command.write { payloadComplete() }
                handle(r, context: context)
            }
        }
        if let p = pending, p.readableBytes == 0 { pending = nil }
    }

    /// The reservation for the WRITE header is in place: take its payload, and watch for a stall.
    private func startPayload(_ r: NBDRequest, context: ChannelHandlerContext) {
        reservedForIncomplete = Int(r.length)
        parser.acceptPayload()
        scheduleStallCheck(context: context)
    }

    private func budgetGranted(context: ChannelHandlerContext) {
        guard let r = waitingForBudget, !closed else {
            // Closed after the grant was made: give it straight back.
            if let r = waitingForBudget {
                waitingForBudget = nil
                budget.release(Int(r.length))
            }
            return
        }
        waitingForBudget = nil
        startPayload(r, context: context)
        parsePending(context: context)
        if flushPending {
            flushPending = false
            context.flush()
        }
        resumeReading(context: context)
    }

    /// The WRITE being received is complete: its reservation now covers a request in flight.
    private func payloadComplete() {
        reservedForIncomplete = 0
        stallCheck?.cancel()
        stallCheck = nil
    }

    /// Checks, every `stallTimeout`, whether the WRITE being received is still incomplete
    /// while others wait for budget; if so the connection is closed and its reservation freed.
    private func scheduleStallCheck(context: ChannelHandlerContext) {
        stallCheck?.cancel()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        stallCheck = context.eventLoop.scheduleTask(in: stallTimeout) {
            let (handler, context) = loopBound.value
            handler.stallCheck = nil
            guard !handler.closed, let incomplete = handler.parser.incompleteWrite else { return }
            // Not the client's fault: we stopped reading because our own pool is saturated.
            let heldByUs = handler.readHeld && handler.saturated && context.channel.isWritable
            if heldByUs || !handler.budget.hasWaiters {
                handler.scheduleStallCheck(context: context)
                return
            }
            handler.logger.warning("closing a stalled connection: its WRITE is still incomplete while other connections wait for payload budget", metadata: [
                "length": "\(incomplete.request.length)", "received": "\(incomplete.received)",
                "stallTimeout": "\(handler.stallTimeout)",
            ])
            handler.closing = true
            handler.closed = true
            context.close(promise: nil)
        }
    }

    /// While waiting, keep only the unparsed bytes, not the (up to 1 MiB) read buffer around them.
    private func compactPending(allocator: ByteBufferAllocator) {
        guard var p = pending, p.capacity > 2 * p.readableBytes + 4096 else { return }
        var compact = allocator.buffer(capacity: p.readableBytes)
        compact.writeBuffer(&p)
        pending = compact
    }

    /// Gives back what this connection reserved for a request it will never finish receiving.
    private func releaseIncomplete() {
        stallCheck?.cancel()
        stallCheck = nil
        if reservedForIncomplete > 0 {
            budget.release(reservedForIncomplete)
            reservedForIncomplete = 0
        }
        if waitingForBudget != nil, budget.cancel(budgetID) {
            waitingForBudget = nil
        }
        // Otherwise the grant is on its way; `budgetGranted` releases it (the channel is closed).
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if flushPending {
            flushPending = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    private func handle(_ r: NBDRequest, context: ChannelHandlerContext) {
        // The reservation a complete WRITE carries, returned when its export call is done.
        let reserved = r.type == NBDProtocol.Command.write ? Int(r.length) : 0
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
            budget.release(reserved)
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
            if completions.push(.init(reply: reply, bytes: bytes, reserved: reserved)) {
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
        var reserved = 0
        for c in done {
            inFlight -= 1
            inFlightBytes -= c.bytes
            reserved += c.reserved
            if !closed { context.write(wrapOutboundOut(c.reply), promise: nil) }
        }
        if !closed, !done.isEmpty || flushPending {
            flushPending = false
            context.flush()
        }
        budget.release(reserved)
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
        guard readHeld, waitingForBudget == nil, !saturated, context.channel.isWritable else { return }
        readHeld = false
        context.read()
    }

    func read(context: ChannelHandlerContext) {
        if waitingForBudget != nil || saturated || !context.channel.isWritable {
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
        closing = true
        pending = nil
        releaseIncomplete()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        closed = true
        closing = true
        pending = nil
        releaseIncomplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        closing = true
        closed = true
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension NBDTransmissionHandler: Sendable {}
