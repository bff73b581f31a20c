import NIOCore

/// One transmission-phase request as it came off the wire. `payload` is set for WRITE only.
package struct NBDRequest: Sendable, Equatable {
    package var flags: UInt16
    package var type: UInt16
    package var cookie: UInt64
    package var offset: UInt64
    package var length: UInt32
    package var payload: ByteBuffer?

    package init(flags: UInt16, type: UInt16, cookie: UInt64, offset: UInt64, length: UInt32, payload: ByteBuffer? = nil) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
        self.payload = payload
    }

    /// The wire form (client side, and tests).
    package func encode(into buffer: inout ByteBuffer) {
        buffer.writeMultipleIntegers(NBDProtocol.requestMagic, flags, type, cookie, offset, length)
        if var p = payload { buffer.writeBuffer(&p) }
    }
}

/// Splits the transmission-phase byte stream into requests, as a pure parser (NIO's WSParser
/// pattern): it never does I/O and never traps on input.
package struct NBDRequestParser {
    package enum Result: Equatable {
        case needMoreData
        case request(NBDRequest)
        /// A WRITE whose payload is longer than we accept. Its bytes cannot be skipped safely
        /// (the length may be a lie), so the connection must end after an EINVAL reply.
        case oversizedWrite(NBDRequest)
    }

    private enum State {
        case header
        case payload(NBDRequest)
        case failed
    }

    private var state: State = .header
    package let maximumPayload: UInt32

    package init(maximumPayload: UInt32 = NBDProtocol.maximumPayload) {
        self.maximumPayload = maximumPayload
    }

    /// Consumes at most one request from `buffer`.
    /// - Throws: `NBDError(.protocolViolation)` on a wrong request magic, or when called again
    ///   after a fatal result; the stream cannot be resynchronised, so the caller closes.
    package mutating func next(_ buffer: inout ByteBuffer) throws(NBDError) -> Result {
        switch state {
        case .failed:
            throw NBDError(.protocolViolation, "request stream already broken; the connection must be closed")
        case .header:
            guard let (magic, flags, type, cookie, offset, length) = buffer.getMultipleIntegers(
                at: buffer.readerIndex, as: (UInt32, UInt16, UInt16, UInt64, UInt64, UInt32).self) else {
                return .needMoreData
            }
            guard magic == NBDProtocol.requestMagic else {
                state = .failed
                throw NBDError(.protocolViolation, "request magic 0x\(String(magic, radix: 16)) is not NBD_REQUEST_MAGIC; closing the connection")
            }
            buffer.moveReaderIndex(forwardBy: NBDProtocol.requestHeaderSize)
            let request = NBDRequest(flags: flags, type: type, cookie: cookie, offset: offset, length: length)
            guard type == NBDProtocol.Command.write else { return .request(request) }
            guard length <= maximumPayload else {
                state = .failed
                return .oversizedWrite(request)
            }
            state = .payload(request)
            return try next(&buffer)
        case .payload(var request):
            guard let data = buffer.readSlice(length: Int(request.length)) else { return .needMoreData }
            request.payload = data
            state = .header
            return .request(request)
        }
    }
}

/// The request parser as a `ByteToMessageDecoder` for the channel pipeline.
package final class NBDRequestDecoder: ByteToMessageDecoder {
    package typealias InboundOut = NBDRequestParser.Result
    private var parser: NBDRequestParser
    /// Set after an oversized WRITE: what follows is unparseable, and the handler is closing.
    private var stopped = false

    package init(maximumPayload: UInt32 = NBDProtocol.maximumPayload) {
        parser = NBDRequestParser(maximumPayload: maximumPayload)
    }

    package func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if stopped {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        let result = try parser.next(&buffer)
        switch result {
        case .needMoreData: return .needMoreData
        case .oversizedWrite: stopped = true
        case .request: break
        }
        context.fireChannelRead(wrapInboundOut(result))
        return .continue
    }

    package func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A request cut short by EOF is dropped: its sender is gone.
        .needMoreData
    }
}

@available(*, unavailable)
extension NBDRequestDecoder: Sendable {}
