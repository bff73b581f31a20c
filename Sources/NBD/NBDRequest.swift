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
///
/// A WRITE payload that is not wholly in the buffer is copied, as it arrives, into a buffer of
/// exactly its length (never a doubling cumulation buffer), so the memory an incomplete WRITE
/// holds is its length. With `gatePayloads`, the parser stops after a WRITE header
/// (`.writeHeader`) and takes no payload byte until the caller, having reserved memory for it,
/// calls `acceptPayload()`.
package struct NBDRequestParser {
    package enum Result: Equatable {
        case needMoreData
        case request(NBDRequest)
        /// A WRITE whose payload is longer than we accept. Its bytes cannot be skipped safely
        /// (the length may be a lie), so the connection must end after an EINVAL reply.
        case oversizedWrite(NBDRequest)
        /// Only with `gatePayloads`: a WRITE header. Call `acceptPayload()` before the next
        /// `next(_:)`; until then `next` consumes nothing and returns `.needMoreData`.
        case writeHeader(NBDRequest)
    }

    private enum State {
        case header
        case gated(NBDRequest)
        /// Receiving a WRITE payload (what arrived so far is in `received`).
        case payload(NBDRequest)
        case failed
    }

    private var state: State = .header
    /// The part of a WRITE payload that arrived so far, in a buffer of exactly its length; nil
    /// while nothing had to be kept (a payload wholly in one read is sliced, not copied).
    private var received: ByteBuffer?
    package let maximumPayload: UInt32
    package let gatePayloads: Bool

    package init(maximumPayload: UInt32 = NBDProtocol.maximumPayload, gatePayloads: Bool = false) {
        self.maximumPayload = maximumPayload
        self.gatePayloads = gatePayloads
    }

    /// The WRITE whose payload is being received (after `acceptPayload()`, or ungated), with
    /// the number of its payload bytes received so far.
    package var incompleteWrite: (request: NBDRequest, received: Int)? {
        if case .payload(let r) = state { return (r, received?.readableBytes ?? 0) }
        return nil
    }

    /// Lets the parser take the payload of the WRITE it reported as `.writeHeader`.
    package mutating func acceptPayload() {
        if case .gated(let r) = state { state = .payload(r) }
    }

    /// Consumes at most one request from `buffer`.
    /// - Throws: `NBDError(.protocolViolation)` on a wrong request magic, or when called again
    ///   after a fatal result; the stream cannot be resynchronised, so the caller closes.
    package mutating func next(_ buffer: inout ByteBuffer) throws(NBDError) -> Result {
        switch state {
        case .failed:
            throw NBDError(.protocolViolation, "request stream already broken; the connection must be closed")
        case .gated:
            return .needMoreData
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
            if gatePayloads {
                state = .gated(request)
                return .writeHeader(request)
            }
            state = .payload(request)
            return try next(&buffer)
        case .payload(var request):
            let length = Int(request.length)
            if received == nil {
                if let whole = buffer.readSlice(length: length) {
                    // The common case: the whole payload is here; no copy.
                    request.payload = whole
                    state = .header
                    return .request(request)
                }
                received = ByteBufferAllocator().buffer(capacity: length)
            }
            // `received` is only ever referenced here, so appending never copies it.
            let n = min(length - received!.readableBytes, buffer.readableBytes)
            if n > 0, var part = buffer.readSlice(length: n) { received!.writeBuffer(&part) }
            guard received!.readableBytes == length else { return .needMoreData }
            request.payload = received
            received = nil
            state = .header
            return .request(request)
        }
    }
}
