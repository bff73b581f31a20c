import NIOCore
import TrackerControl

/// One message read from a control connection.
enum ControlFrame: Sendable {
    /// A message whose magic, version and length are right. Its request number may still be
    /// unknown: that is answered with `unknown-request` and the stream stays in step.
    case message(ControlProtocol.Header, payload: [UInt8])
    /// Bytes that are not a control message (or a message cut off by the end of the stream):
    /// answered with this error, then the connection is closed, because a byte stream cannot
    /// be put back in step.
    case malformed(id: UInt32, FilterError)
}

/// Cuts the bytes of a control connection into messages (docs/CONTROL.md "Framing"): a 16-byte
/// little-endian header, then a JSON payload of at most 64 KiB.
///
/// Pure: it only looks at the buffer it is given, so it is driven by `ControlFrameDecoder` and
/// by tests alike. A header is judged as soon as its 16 bytes are there: a wrong magic, a
/// wrong version or an oversized length is refused before any payload is waited for.
struct ControlFrameParser {
    /// After a malformed message every later byte is dropped.
    private(set) var broken = false

    /// The next message in `buffer` (consuming it), or nil when more bytes are needed.
    mutating func next(_ buffer: inout ByteBuffer) -> ControlFrame? {
        if broken {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return nil
        }
        guard let (magic, version, number, id, length) = buffer.getMultipleIntegers(
            at: buffer.readerIndex, endianness: .little, as: (UInt32, UInt16, UInt16, UInt32, UInt32).self) else {
            return nil
        }
        if let error = Self.check(magic: magic, version: version, length: length) {
            broken = true
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .malformed(id: id, error)
        }
        guard buffer.readableBytes >= ControlProtocol.headerSize + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: ControlProtocol.headerSize)
        let payload = buffer.readBytes(length: Int(length)) ?? []
        let header = ControlProtocol.Header(magic: magic, version: version, number: number, id: id, length: length)
        return .message(header, payload: payload)
    }

    /// The end of the stream: bytes left in `buffer` are a message cut off, which gets an error
    /// (nil when nothing was left, or the stream was already broken).
    mutating func end(_ buffer: inout ByteBuffer) -> ControlFrame? {
        defer { buffer.moveReaderIndex(forwardBy: buffer.readableBytes) }
        guard !broken, buffer.readableBytes > 0 else { return nil }
        broken = true
        let id = buffer.readableBytes >= 12 ? buffer.getInteger(at: buffer.readerIndex + 8, endianness: .little, as: UInt32.self) ?? 0 : 0
        let expected = buffer.getInteger(at: buffer.readerIndex + 12, endianness: .little, as: UInt32.self)
            .map { "\(ControlProtocol.headerSize + Int($0))" } ?? "at least \(ControlProtocol.headerSize)"
        return .malformed(id: id, FilterError(.badRequest, "the control connection was closed in the middle of a message (\(buffer.readableBytes) of \(expected) bytes)"))
    }

    private static func check(magic: UInt32, version: UInt16, length: UInt32) -> FilterError? {
        guard magic == ControlProtocol.requestMagic else {
            return FilterError(.badRequest, "not a control request (bad magic 0x\(String(magic, radix: 16))); this socket speaks the Tessera control protocol v1, see docs/CONTROL.md")
        }
        guard version == ControlProtocol.version else {
            return FilterError(.unsupportedVersion, "control protocol version \(version) is not supported; this filter speaks version \(ControlProtocol.version)")
        }
        guard length <= ControlProtocol.maxRequestPayload else {
            return FilterError(.badRequest, "request payload of \(length) bytes is over the \(ControlProtocol.maxRequestPayload)-byte limit")
        }
        return nil
    }
}

/// `ControlFrameParser` in a channel pipeline.
final class ControlFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ControlFrame
    private var parser = ControlFrameParser()

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = parser.next(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return parser.broken ? .needMoreData : .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if let frame = parser.end(&buffer) { context.fireChannelRead(wrapInboundOut(frame)) }
        return .needMoreData
    }
}

@available(*, unavailable)
extension ControlFrameDecoder: Sendable {}

/// The bytes of control replies.
enum ControlReply {
    static func success(id: UInt32, body: [UInt8]) -> [UInt8] {
        ControlProtocol.Header(magic: ControlProtocol.responseMagic, number: 0, id: id, length: UInt32(body.count)).bytes + body
    }

    static func error(id: UInt32, _ error: FilterError) -> [UInt8] {
        let body = ControlProtocol.encode(ControlProtocol.ErrorReply(error: error.message, code: error.code.rawValue))
        return ControlProtocol.Header(magic: ControlProtocol.responseMagic, number: ControlProtocol.statusNumber(error.code),
                                      id: id, length: UInt32(body.count)).bytes + body
    }
}
