import NIOCore

/// The server side of the fixed-newstyle handshake as a pure state machine: bytes in, actions out.
///
/// It performs no I/O, so tests drive it with plain calls. Feed it the bytes received after the
/// greeting; each call to `process` consumes at most one message and returns what to do, or nil
/// when it needs more bytes. After `.startTransmission` the remaining bytes in the buffer belong
/// to the transmission phase.
package struct NBDHandshake {
    package enum Action {
        /// Send these bytes (option replies) and keep negotiating.
        case send(ByteBuffer)
        /// Send these bytes, then close (NBD_OPT_ABORT).
        case sendAndClose(ByteBuffer)
        /// Drop the connection: the client broke the protocol or asked for an unknown export
        /// with NBD_OPT_EXPORT_NAME (which has no error reply).
        case close(NBDError)
        /// Send these bytes, then switch to the transmission phase with this session.
        case startTransmission(ByteBuffer, NBDSession)
    }

    private enum State {
        case awaitingClientFlags
        case awaitingOption
        /// An option longer than we accept: skip its payload, then refuse it.
        case discarding(option: UInt32, remaining: UInt32)
        case finished
    }

    private struct MetaSelection {
        var exportName: String
        var contexts: [(id: UInt32, name: String)]
    }

    private let provider: any NBDExportProvider
    private let allocator: ByteBufferAllocator
    private var state: State = .awaitingClientFlags
    private var noZeroes = false
    private var structuredReplies = false
    private var selection: MetaSelection?

    package init(provider: any NBDExportProvider, allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.provider = provider
        self.allocator = allocator
    }

    /// The server's first bytes: NBDMAGIC, IHAVEOPT and the handshake flags.
    package static func greeting(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var b = allocator.buffer(capacity: 18)
        b.writeInteger(NBDProtocol.nbdMagic)
        b.writeInteger(NBDProtocol.optionMagic)
        b.writeInteger(NBDProtocol.flagFixedNewstyle | NBDProtocol.flagNoZeroes)
        return b
    }

    /// Consumes at most one message from `buffer`. Returns nil when more bytes are needed.
    package mutating func process(_ buffer: inout ByteBuffer) -> Action? {
        switch state {
        case .finished:
            return nil
        case .awaitingClientFlags:
            guard let flags = buffer.readInteger(as: UInt32.self) else { return nil }
            let known = NBDProtocol.clientFlagFixedNewstyle | NBDProtocol.clientFlagNoZeroes
            guard flags & ~known == 0 else {
                state = .finished
                return .close(NBDError(.protocolViolation, "client flags 0x\(String(flags, radix: 16)) include unknown bits; the client wants a protocol feature this server lacks"))
            }
            noZeroes = flags & NBDProtocol.clientFlagNoZeroes != 0
            state = .awaitingOption
            return process(&buffer)
        case .discarding(let option, let remaining):
            let n = UInt32(min(Int(remaining), buffer.readableBytes))
            buffer.moveReaderIndex(forwardBy: Int(n))
            if n < remaining {
                state = .discarding(option: option, remaining: remaining - n)
                return nil
            }
            state = .awaitingOption
            return .send(error(option, NBDProtocol.Reply.errTooBig, "option payload longer than \(NBDProtocol.maximumOptionLength) bytes"))
        case .awaitingOption:
            guard let (magic, option, length) = buffer.getMultipleIntegers(at: buffer.readerIndex, as: (UInt64, UInt32, UInt32).self) else {
                return nil
            }
            guard magic == NBDProtocol.optionMagic else {
                state = .finished
                return .close(NBDError(.protocolViolation, "option request without IHAVEOPT magic (got 0x\(String(magic, radix: 16))); not an NBD client"))
            }
            if length > NBDProtocol.maximumOptionLength {
                buffer.moveReaderIndex(forwardBy: 16)
                if option == NBDProtocol.Option.exportName {
                    // EXPORT_NAME has no error reply: closing is the only answer.
                    state = .finished
                    return .close(NBDError(.protocolViolation, "NBD_OPT_EXPORT_NAME with a \(length)-byte name"))
                }
                state = .discarding(option: option, remaining: length)
                return process(&buffer)
            }
            guard buffer.readableBytes >= 16 + Int(length) else { return nil }
            buffer.moveReaderIndex(forwardBy: 16)
            // `length` was bounds-checked just above, so the slice exists.
            guard var data = buffer.readSlice(length: Int(length)) else { return nil }
            return handleOption(option, &data)
        }
    }

    // MARK: - Options

    private mutating func handleOption(_ option: UInt32, _ data: inout ByteBuffer) -> Action {
        typealias O = NBDProtocol.Option
        switch option {
        case O.exportName:
            let name = data.readString(length: data.readableBytes) ?? ""
            guard let export = provider.export(named: name) else {
                state = .finished
                return .close(NBDError(.refused, "NBD_OPT_EXPORT_NAME asked for unknown export \"\(name)\""))
            }
            let info = export.info
            var reply = allocator.buffer(capacity: 134)
            reply.writeInteger(info.size)
            reply.writeInteger(info.transmissionFlags)
            if !noZeroes { reply.writeRepeatingByte(0, count: 124) }
            return start(requestedName: name, export: export, info: info, reply: reply)
        case O.abort:
            state = .finished
            return .sendAndClose(reply(option, NBDProtocol.Reply.ack))
        case O.list:
            guard data.readableBytes == 0 else {
                return .send(error(option, NBDProtocol.Reply.errInvalid, "NBD_OPT_LIST carries no data"))
            }
            var out = allocator.buffer(capacity: 256)
            for name in provider.exportNames() {
                let bytes = Array(name.utf8)
                var payload = allocator.buffer(capacity: 4 + bytes.count)
                payload.writeInteger(UInt32(bytes.count))
                payload.writeBytes(bytes)
                // The rest of an NBD_REP_SERVER payload is the description (nbdinfo --list shows it).
                payload.writeString(provider.export(named: name)?.info.description ?? "")
                out.writeImmutableBuffer(payload.withReply(option, NBDProtocol.Reply.server, allocator))
            }
            out.writeImmutableBuffer(reply(option, NBDProtocol.Reply.ack))
            return .send(out)
        case O.info, O.go:
            return infoOrGo(option, &data)
        case O.structuredReply:
            guard data.readableBytes == 0 else {
                return .send(error(option, NBDProtocol.Reply.errInvalid, "NBD_OPT_STRUCTURED_REPLY carries no data"))
            }
            guard !structuredReplies else {
                return .send(error(option, NBDProtocol.Reply.errInvalid, "structured replies already negotiated"))
            }
            structuredReplies = true
            return .send(reply(option, NBDProtocol.Reply.ack))
        case O.listMetaContext, O.setMetaContext:
            return metaContext(option, &data)
        default:
            return .send(error(option, NBDProtocol.Reply.errUnsupported, "option \(option) is not supported"))
        }
    }

    private mutating func infoOrGo(_ option: UInt32, _ data: inout ByteBuffer) -> Action {
        typealias R = NBDProtocol.Reply
        guard let name = data.readLengthPrefixedString(), let count = data.readInteger(as: UInt16.self),
              data.readableBytes == Int(count) * 2 else {
            return .send(error(option, R.errInvalid, "malformed NBD_OPT_INFO/GO payload"))
        }
        var requests: [UInt16] = []
        for _ in 0..<count { if let r = data.readInteger(as: UInt16.self) { requests.append(r) } }
        guard let export = provider.export(named: name) else {
            return .send(error(option, R.errUnknown, "unknown export \"\(name)\""))
        }
        let info = export.info
        var out = allocator.buffer(capacity: 128)
        for request in Set(requests).sorted() {
            var p = allocator.buffer(capacity: 64)
            switch request {
            case NBDProtocol.Info.name:
                p.writeInteger(request)
                p.writeString(info.name)
            case NBDProtocol.Info.description:
                p.writeInteger(request)
                p.writeString(info.description)
            case NBDProtocol.Info.blockSize:
                p.writeInteger(request)
                p.writeMultipleIntegers(info.minimumBlockSize, info.preferredBlockSize, NBDProtocol.maximumPayload)
            default:
                continue // unknown or EXPORT (always sent below)
            }
            out.writeImmutableBuffer(p.withReply(option, R.info, allocator))
        }
        var exportInfo = allocator.buffer(capacity: 12)
        exportInfo.writeMultipleIntegers(NBDProtocol.Info.export, info.size, info.transmissionFlags)
        out.writeImmutableBuffer(exportInfo.withReply(option, R.info, allocator))
        out.writeImmutableBuffer(reply(option, R.ack))
        if option == NBDProtocol.Option.info { return .send(out) }
        return start(requestedName: name, export: export, info: info, reply: out)
    }

    private mutating func start(requestedName: String, export: any NBDExport, info: NBDExportInfo, reply: ByteBuffer) -> Action {
        state = .finished
        // A meta context selection applies only to the export it was made for ("" and the
        // default export's real name both name the default export).
        let sameExport = selection.map { $0.exportName == requestedName || $0.exportName == info.name } ?? false
        let contexts = sameExport && structuredReplies ? selection?.contexts ?? [] : []
        return .startTransmission(reply, NBDSession(export: export, info: info, structuredReplies: structuredReplies,
                                                    contexts: contexts))
    }

    private mutating func metaContext(_ option: UInt32, _ data: inout ByteBuffer) -> Action {
        typealias R = NBDProtocol.Reply
        let isList = option == NBDProtocol.Option.listMetaContext
        guard let name = data.readLengthPrefixedString(), let count = data.readInteger(as: UInt32.self) else {
            return .send(error(option, R.errInvalid, "malformed meta context payload"))
        }
        var queries: [String] = []
        for _ in 0..<count {
            guard let q = data.readLengthPrefixedString() else {
                return .send(error(option, R.errInvalid, "malformed meta context query"))
            }
            queries.append(q)
        }
        guard data.readableBytes == 0 else {
            return .send(error(option, R.errInvalid, "trailing bytes after meta context queries"))
        }
        if !isList && !structuredReplies {
            return .send(error(option, R.errInvalid, "NBD_OPT_SET_META_CONTEXT needs structured replies first"))
        }
        guard let export = provider.export(named: name) else {
            return .send(error(option, R.errUnknown, "unknown export \"\(name)\""))
        }
        let available = export.info.metaContexts
        var chosen = IndexSet32()
        if isList && queries.isEmpty {
            chosen.insert(all: available.indices)
        }
        for q in queries {
            for (i, c) in available.enumerated() {
                // Exact names select; on LIST a query ending in ':' ("base:", "qemu:",
                // "qemu:dirty-bitmap:") lists everything under it. SET ignores such wildcards,
                // as qemu does.
                if c == q || (isList && q.hasSuffix(":") && c.hasPrefix(q)) { chosen.insert(i) }
            }
        }
        var out = allocator.buffer(capacity: 128)
        var selected: [(id: UInt32, name: String)] = []
        for i in chosen.sorted {
            var p = allocator.buffer(capacity: 4 + available[i].utf8.count)
            p.writeInteger(UInt32(i))
            p.writeString(available[i])
            out.writeImmutableBuffer(p.withReply(option, R.metaContext, allocator))
            selected.append((UInt32(i), available[i]))
        }
        out.writeImmutableBuffer(reply(option, R.ack))
        if !isList { selection = MetaSelection(exportName: name, contexts: selected) }
        return .send(out)
    }

    // MARK: - Replies

    private func reply(_ option: UInt32, _ type: UInt32) -> ByteBuffer {
        allocator.buffer(capacity: 0).withReply(option, type, allocator)
    }

    private func error(_ option: UInt32, _ type: UInt32, _ message: String) -> ByteBuffer {
        allocator.buffer(string: message).withReply(option, type, allocator)
    }
}

/// A tiny sorted set of small indices (meta context positions), so a context matched by two
/// queries is reported once.
private struct IndexSet32 {
    private var members: Set<Int> = []
    mutating func insert(_ i: Int) { members.insert(i) }
    mutating func insert(all range: Range<Int>) { for i in range { members.insert(i) } }
    var sorted: [Int] { members.sorted() }
}

extension ByteBuffer {
    /// This buffer as the payload of an option reply.
    fileprivate func withReply(_ option: UInt32, _ type: UInt32, _ allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 20 + readableBytes)
        out.writeMultipleIntegers(NBDProtocol.optionReplyMagic, option, type, UInt32(readableBytes))
        out.writeImmutableBuffer(self)
        return out
    }

    /// A 32-bit length followed by that many UTF-8 bytes, at most 4096 (proto.md's limit).
    fileprivate mutating func readLengthPrefixedString() -> String? {
        let save = readerIndex
        guard let length = readInteger(as: UInt32.self), length <= NBDProtocol.maximumStringLength,
              let s = readString(length: Int(length)) else {
            moveReaderIndex(to: save)
            return nil
        }
        return s
    }
}
