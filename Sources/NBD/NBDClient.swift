import BlockIO
import NIOCore

/// A blocking NBD client: fixed-newstyle handshake, structured replies, meta contexts, one
/// request at a time. Used by the agent to read from qemu-nbd or from our own server.
///
/// Not thread-safe: use one client per thread (open several for parallel reads).
public final class NBDClient {
    /// The export's size in bytes.
    public private(set) var exportSize: UInt64 = 0
    /// The meta contexts the server agreed to, as asked for in `connect` (names).
    public private(set) var negotiatedContexts: [String] = []
    /// The transmission flags the server sent.
    public private(set) var transmissionFlags: UInt16 = 0
    /// True when the server negotiated structured replies.
    public private(set) var structuredReplies = false
    /// The server's preferred and maximum request sizes (NBD_INFO_BLOCK_SIZE), if it sent them.
    public private(set) var preferredBlockSize: UInt32 = 4096
    public private(set) var maximumBlockSize: UInt32 = NBDProtocol.maximumPayload

    public var isReadOnly: Bool { transmissionFlags & NBDProtocol.TransmissionFlag.readOnly != 0 }

    private let socket: NBDSocket
    private var contextIDs: [UInt32: String] = [:]
    private var nextCookie: UInt64 = 1
    private var broken = false
    private let allocator = ByteBufferAllocator()

    private init(socket: NBDSocket) {
        self.socket = socket
    }

    deinit { socket.close() }

    /// Connects and negotiates: structured replies, the requested meta contexts, then GO.
    /// - Parameters:
    ///   - metaContexts: contexts to select, e.g. `["qemu:dirty-bitmap:b0"]`. Asking for one the
    ///     server lacks is no error; check `negotiatedContexts`.
    ///   - timeoutSeconds: when set, any single send or receive that blocks longer fails with
    ///     `.connection` (a hung server then cannot hang the caller).
    /// - Throws: `NBDError` (`.connection`, `.refused` for an unknown export, `.protocolViolation`).
    public static func connect(_ uri: NBDURI, metaContexts: [String] = [], timeoutSeconds: Int? = nil) throws -> NBDClient {
        let socket = try NBDSocket.connect(uri.endpoint)
        if let timeoutSeconds {
            socket.setReceiveTimeout(seconds: timeoutSeconds)
            socket.setSendTimeout(seconds: timeoutSeconds)
        }
        let client = NBDClient(socket: socket)
        try client.handshake(exportName: uri.exportName, metaContexts: metaContexts)
        return client
    }

    /// The export names the server lists (NBD_OPT_LIST); then the handshake is aborted.
    public static func listExports(_ uri: NBDURI) throws -> [String] {
        let client = NBDClient(socket: try NBDSocket.connect(uri.endpoint))
        defer { client.socket.close() }
        try client.greet()
        try client.sendOption(NBDProtocol.Option.list, payload: [])
        var names: [String] = []
        while true {
            let (type, data) = try client.receiveOptionReply(NBDProtocol.Option.list)
            if type == NBDProtocol.Reply.ack { break }
            guard type == NBDProtocol.Reply.server else {
                throw client.refusal(type, data, what: "NBD_OPT_LIST")
            }
            var d = data
            guard let length = d.readInteger(as: UInt32.self), let name = d.readString(length: Int(length)) else {
                throw NBDError(.protocolViolation, "malformed NBD_REP_SERVER reply")
            }
            names.append(name)
        }
        try? client.sendOption(NBDProtocol.Option.abort, payload: [])
        return names
    }

    // MARK: - Handshake

    private func greet() throws {
        var b = try receiveBuffer(18)
        guard let (magic, option, flags) = b.readMultipleIntegers(as: (UInt64, UInt64, UInt16).self),
              magic == NBDProtocol.nbdMagic else {
            throw NBDError(.protocolViolation, "the peer is not an NBD server (bad greeting magic)")
        }
        guard option == NBDProtocol.optionMagic, flags & NBDProtocol.flagFixedNewstyle != 0 else {
            throw NBDError(.protocolViolation, "the server does not speak fixed-newstyle NBD; oldstyle servers are not supported")
        }
        var clientFlags = NBDProtocol.clientFlagFixedNewstyle
        if flags & NBDProtocol.flagNoZeroes != 0 { clientFlags |= NBDProtocol.clientFlagNoZeroes }
        var out = allocator.buffer(capacity: 4)
        out.writeInteger(clientFlags)
        try send(out)
    }

    private func handshake(exportName: String, metaContexts: [String]) throws {
        try greet()
        try sendOption(NBDProtocol.Option.structuredReply, payload: [])
        let (srType, _) = try receiveOptionReply(NBDProtocol.Option.structuredReply)
        structuredReplies = srType == NBDProtocol.Reply.ack
        if structuredReplies && !metaContexts.isEmpty {
            var p = allocator.buffer(capacity: 64)
            p.writeLengthPrefixed(exportName)
            p.writeInteger(UInt32(metaContexts.count))
            for q in metaContexts { p.writeLengthPrefixed(q) }
            try sendOption(NBDProtocol.Option.setMetaContext, payload: Array(p.readableBytesView))
            while true {
                let (type, data) = try receiveOptionReply(NBDProtocol.Option.setMetaContext)
                if type == NBDProtocol.Reply.ack { break }
                guard type == NBDProtocol.Reply.metaContext else {
                    throw refusal(type, data, what: "NBD_OPT_SET_META_CONTEXT")
                }
                var d = data
                guard let id = d.readInteger(as: UInt32.self), let name = d.readString(length: d.readableBytes) else {
                    throw NBDError(.protocolViolation, "malformed NBD_REP_META_CONTEXT reply")
                }
                contextIDs[id] = name
                negotiatedContexts.append(name)
            }
        }
        var go = allocator.buffer(capacity: 64)
        go.writeLengthPrefixed(exportName)
        go.writeInteger(UInt16(1))
        go.writeInteger(NBDProtocol.Info.blockSize)
        try sendOption(NBDProtocol.Option.go, payload: Array(go.readableBytesView))
        var sawExport = false
        while true {
            let (type, data) = try receiveOptionReply(NBDProtocol.Option.go)
            if type == NBDProtocol.Reply.ack { break }
            guard type == NBDProtocol.Reply.info else {
                throw refusal(type, data, what: "NBD_OPT_GO for export \"\(exportName)\"")
            }
            var d = data
            switch d.readInteger(as: UInt16.self) {
            case NBDProtocol.Info.export:
                guard let (size, flags) = d.readMultipleIntegers(as: (UInt64, UInt16).self) else {
                    throw NBDError(.protocolViolation, "malformed NBD_INFO_EXPORT")
                }
                exportSize = size
                transmissionFlags = flags
                sawExport = true
            case NBDProtocol.Info.blockSize:
                if let (_, preferred, maximum) = d.readMultipleIntegers(as: (UInt32, UInt32, UInt32).self) {
                    preferredBlockSize = preferred
                    maximumBlockSize = min(maximum, NBDProtocol.maximumPayload)
                }
            default:
                break // other information is optional
            }
        }
        guard sawExport else { throw NBDError(.protocolViolation, "the server finished NBD_OPT_GO without NBD_INFO_EXPORT") }
    }

    private func sendOption(_ option: UInt32, payload: [UInt8]) throws {
        var b = allocator.buffer(capacity: 16 + payload.count)
        b.writeMultipleIntegers(NBDProtocol.optionMagic, option, UInt32(payload.count))
        b.writeBytes(payload)
        try send(b)
    }

    private func receiveOptionReply(_ option: UInt32) throws -> (type: UInt32, data: ByteBuffer) {
        var h = try receiveBuffer(20)
        guard let (magic, replyOption, type, length) = h.readMultipleIntegers(as: (UInt64, UInt32, UInt32, UInt32).self),
              magic == NBDProtocol.optionReplyMagic, replyOption == option else {
            throw NBDError(.protocolViolation, "bad option reply from the server")
        }
        guard length <= 16 << 20 else { throw NBDError(.protocolViolation, "option reply of \(length) bytes is implausible") }
        return (type, try receiveBuffer(Int(length)))
    }

    private func refusal(_ type: UInt32, _ data: ByteBuffer, what: String) -> NBDError {
        let text = data.getString(at: data.readerIndex, length: data.readableBytes) ?? ""
        let reason: String
        switch type {
        case NBDProtocol.Reply.errUnknown: reason = "unknown export"
        case NBDProtocol.Reply.errUnsupported: reason = "not supported"
        case NBDProtocol.Reply.errInvalid: reason = "invalid request"
        case NBDProtocol.Reply.errPolicy: reason = "refused by policy"
        case NBDProtocol.Reply.errTLSRequired: reason = "TLS required (not supported by this client)"
        case NBDProtocol.Reply.errTooBig: reason = "request too big"
        default: reason = "reply type 0x\(String(type, radix: 16))"
        }
        return NBDError(.refused, "server refused \(what): \(reason)\(text.isEmpty ? "" : " (\(text))")")
    }

    // MARK: - Transmission

    /// Reads `length` bytes at `offset` into the start of `buffer`. Lengths above the server's
    /// maximum block size are split into several requests. Handles simple replies and
    /// OFFSET_DATA / OFFSET_HOLE / ERROR chunks.
    public func read(offset: UInt64, length: UInt32, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard buffer.count >= Int(length) else {
            throw NBDError(.invalid, "read buffer of \(buffer.count) bytes is smaller than the \(length) bytes asked for")
        }
        let step = max(UInt32(4096), maximumBlockSize)
        var done: UInt32 = 0
        while done < length {
            let n = min(step, length - done)
            try readOne(offset: offset + UInt64(done), length: n,
                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[Int(done)..<Int(done + n)]))
            done += n
        }
    }

    private func readOne(offset: UInt64, length: UInt32, into buffer: UnsafeMutableRawBufferPointer) throws {
        let cookie = try sendRequest(type: NBDProtocol.Command.read, flags: 0, offset: offset, length: length)
        var covered: UInt64 = 0
        var failure: NBDError?
        try receiveReply(cookie: cookie, simpleData: { try self.socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(length)])); covered = UInt64(length) }) { type, payloadLength in
            switch type {
            case NBDProtocol.ChunkType.offsetData:
                var h = try self.receiveBuffer(8)
                let at = h.readInteger(as: UInt64.self) ?? 0
                let count = UInt64(payloadLength) - 8
                guard payloadLength >= 8, at >= offset, at + count <= offset + UInt64(length) else {
                    throw self.broke("OFFSET_DATA chunk outside the requested range")
                }
                let start = Int(at - offset)
                try self.socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + Int(count)]))
                covered += count
            case NBDProtocol.ChunkType.offsetHole:
                var h = try self.receiveBuffer(Int(payloadLength))
                guard let (at, count) = h.readMultipleIntegers(as: (UInt64, UInt32).self),
                      at >= offset, at + UInt64(count) <= offset + UInt64(length) else {
                    throw self.broke("OFFSET_HOLE chunk outside the requested range")
                }
                let start = Int(at - offset)
                UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + Int(count)]).initializeMemory(as: UInt8.self, repeating: 0)
                covered += UInt64(count)
            default:
                if let e = try self.errorChunk(type, payloadLength, what: "READ at \(offset)") { failure = e }
            }
        }
        if let failure { throw failure }
        guard covered == UInt64(length) else {
            throw NBDError(.protocolViolation, "the server's read reply covered \(covered) of \(length) bytes")
        }
    }

    /// Reads `length` bytes at `offset` into a new array.
    public func read(offset: UInt64, length: UInt32) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(length))
        try out.withUnsafeMutableBytes { try read(offset: offset, length: length, into: $0) }
        return out
    }

    /// Writes `data` at `offset`; with `fua` the server makes it durable before replying.
    public func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool = false) throws {
        let cookie = try sendRequest(type: NBDProtocol.Command.write, flags: fua ? NBDProtocol.CommandFlag.fua : 0,
                                     offset: offset, length: UInt32(data.count), payload: data)
        try expectDone(cookie: cookie, what: "WRITE at \(offset)")
    }

    public func write(offset: UInt64, data: [UInt8], fua: Bool = false) throws {
        try data.withUnsafeBytes { try write(offset: offset, data: $0, fua: fua) }
    }

    public func flush() throws {
        let cookie = try sendRequest(type: NBDProtocol.Command.flush, flags: 0, offset: 0, length: 0)
        try expectDone(cookie: cookie, what: "FLUSH")
    }

    public func trim(offset: UInt64, length: UInt32) throws {
        let cookie = try sendRequest(type: NBDProtocol.Command.trim, flags: 0, offset: offset, length: length)
        try expectDone(cookie: cookie, what: "TRIM at \(offset)")
    }

    public func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool = false) throws {
        let cookie = try sendRequest(type: NBDProtocol.Command.writeZeroes, flags: noHole ? NBDProtocol.CommandFlag.noHole : 0,
                                     offset: offset, length: length)
        try expectDone(cookie: cookie, what: "WRITE_ZEROES at \(offset)")
    }

    /// The extents the server reports for `context` from `offset`. They are consecutive from
    /// `offset`, may cover less than `length` (ask again from where they end) and are clipped
    /// here so they never run past `offset + length`.
    /// - Throws: `NBDError(.invalid)` when `context` was not negotiated.
    public func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        guard let id = contextIDs.first(where: { $0.value == context })?.key else {
            throw NBDError(.invalid, "meta context \(context) was not negotiated; pass it to NBDClient.connect (negotiated: \(negotiatedContexts))")
        }
        let cookie = try sendRequest(type: NBDProtocol.Command.blockStatus, flags: 0, offset: offset, length: length)
        var extents: [NBDBlockStatusExtent] = []
        var failure: NBDError?
        try receiveReply(cookie: cookie, simpleData: nil) { type, payloadLength in
            switch type {
            case NBDProtocol.ChunkType.blockStatus:
                guard payloadLength >= 12, (payloadLength - 4) % 8 == 0 else { throw self.broke("malformed BLOCK_STATUS chunk") }
                var d = try self.receiveBuffer(Int(payloadLength))
                let chunkContext = d.readInteger(as: UInt32.self)
                guard chunkContext == id else { return }
                var remaining = length
                while let (l, f) = d.readMultipleIntegers(as: (UInt32, UInt32).self), remaining > 0 {
                    let n = min(l, remaining)
                    extents.append(NBDBlockStatusExtent(length: n, flags: f))
                    remaining -= n
                }
            default:
                if let e = try self.errorChunk(type, payloadLength, what: "BLOCK_STATUS at \(offset)") { failure = e }
            }
        }
        if let failure { throw failure }
        guard !extents.isEmpty else { throw NBDError(.protocolViolation, "the server sent no extents for \(context)") }
        return extents
    }

    /// The status of every byte of `range` for `context`, asking as often as needed (servers may
    /// answer less than asked) with adjacent extents of equal flags merged.
    public func blockStatus(context: String, range: ByteRange) throws -> [(range: ByteRange, flags: UInt32)] {
        var out: [(range: ByteRange, flags: UInt32)] = []
        var at = range.offset
        while at < range.end {
            // 2 GiB steps keep lengths far from UInt32 overflow and match what qemu answers.
            let length = UInt32(min(range.end - at, 1 << 31))
            for e in try blockStatus(context: context, offset: at, length: length) {
                if let last = out.last, last.flags == e.flags, last.range.end == at {
                    out[out.count - 1].range.length += UInt64(e.length)
                } else {
                    out.append((ByteRange(offset: at, length: UInt64(e.length)), e.flags))
                }
                at += UInt64(e.length)
            }
        }
        return out
    }

    /// Sends NBD_CMD_DISC and closes the socket. Safe to call twice.
    public func close() {
        if !broken {
            _ = try? sendRequest(type: NBDProtocol.Command.disconnect, flags: 0, offset: 0, length: 0)
            broken = true
        }
        socket.close()
    }

    // MARK: - Wire helpers

    private func sendRequest(type: UInt16, flags: UInt16, offset: UInt64, length: UInt32,
                             payload: UnsafeRawBufferPointer? = nil) throws -> UInt64 {
        guard !broken else { throw NBDError(.connection, "the connection is closed or broken; connect again") }
        let cookie = nextCookie
        nextCookie &+= 1
        var h = allocator.buffer(capacity: 28)
        h.writeMultipleIntegers(NBDProtocol.requestMagic, flags, type, cookie, offset, length)
        try send(h)
        if let payload { try guarded { try socket.send(payload) } }
        return cookie
    }

    private func expectDone(cookie: UInt64, what: String) throws {
        var failure: NBDError?
        try receiveReply(cookie: cookie, simpleData: nil) { type, length in
            if let e = try self.errorChunk(type, length, what: what) { failure = e }
        }
        if let failure { throw failure }
    }

    /// Reads one reply (simple, or structured chunks until DONE). `chunk` gets each chunk's type
    /// and payload length and must consume exactly that payload.
    private func receiveReply(cookie: UInt64, simpleData: (() throws -> Void)?,
                              chunk: (UInt16, UInt32) throws -> Void) throws {
        while true {
            var m = try receiveBuffer(4)
            let magic = m.readInteger(as: UInt32.self)
            if magic == NBDProtocol.simpleReplyMagic {
                var h = try receiveBuffer(12)
                guard let (error, replyCookie) = h.readMultipleIntegers(as: (UInt32, UInt64).self), replyCookie == cookie else {
                    throw broke("reply for an unexpected cookie")
                }
                if error != 0 {
                    throw NBDError(NBDError.code(wireErrno: error), "the server failed the request with errno \(error)")
                }
                try guarded { try simpleData?() }
                return
            }
            guard magic == NBDProtocol.structuredReplyMagic else { throw broke("bad reply magic") }
            var h = try receiveBuffer(16)
            guard let (flags, type, replyCookie, length) = h.readMultipleIntegers(as: (UInt16, UInt16, UInt64, UInt32).self),
                  replyCookie == cookie, length <= NBDProtocol.maximumPayload + 64 else {
                throw broke("bad structured reply chunk")
            }
            if type == NBDProtocol.ChunkType.none {
                guard length == 0 else { throw broke("NONE chunk with a payload") }
            } else {
                try guarded { try chunk(type, length) }
            }
            if flags & NBDProtocol.ReplyFlag.done != 0 { return }
        }
    }

    /// Reads an ERROR / ERROR_OFFSET chunk and returns it as an error; unknown chunk types break
    /// the connection (their payload cannot be interpreted).
    private func errorChunk(_ type: UInt16, _ length: UInt32, what: String) throws -> NBDError? {
        guard type & (1 << 15) != 0, length >= 6 else { throw broke("unexpected reply chunk type \(type)") }
        var d = try receiveBuffer(Int(length))
        let errno = d.readInteger(as: UInt32.self) ?? 5
        let messageLength = Int(d.readInteger(as: UInt16.self) ?? 0)
        let message = d.readString(length: min(messageLength, d.readableBytes)) ?? ""
        return NBDError(NBDError.code(wireErrno: errno),
                        "\(what) failed on the server: errno \(errno)\(message.isEmpty ? "" : ": \(message)")")
    }

    private func broke(_ why: String) -> NBDError {
        broken = true
        socket.close()
        return NBDError(.protocolViolation, "the server broke the protocol (\(why)); the connection was closed")
    }

    /// Runs socket I/O; a failure leaves the stream unusable, so the client refuses further requests.
    private func guarded<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch {
            broken = true
            throw error
        }
    }

    private func send(_ b: ByteBuffer) throws {
        try guarded { try b.withUnsafeReadableBytes { try socket.send($0) } }
    }

    private func receiveBuffer(_ count: Int) throws -> ByteBuffer {
        try guarded {
            var b = allocator.buffer(capacity: count)
            try b.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { space in
                try socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: space[0..<count]))
                return count
            }
            return b
        }
    }
}

@available(*, unavailable)
extension NBDClient: Sendable {}

extension ByteBuffer {
    fileprivate mutating func writeLengthPrefixed(_ s: String) {
        writeInteger(UInt32(s.utf8.count))
        writeString(s)
    }
}
