import NIOCore

/// The transmission phase without I/O: request validation and the execution of one request
/// against an export, producing the complete reply bytes. The channel handler only decides
/// where these calls run (small cached reads on the event loop, the rest on a thread pool)
/// and writes what they return.
package enum NBDTransmission {
    /// Why a request cannot be served, checked on the event loop before any export call.
    /// Returns nil when the request is valid for this session.
    package static func validate(_ r: NBDRequest, session: NBDSession) -> NBDError? {
        typealias C = NBDProtocol.Command
        typealias F = NBDProtocol.CommandFlag
        let info = session.info
        let allowed: UInt16
        switch r.type {
        case C.read: allowed = F.dontFragment
        case C.write: allowed = F.fua
        case C.flush: allowed = 0
        case C.trim: allowed = F.fua
        case C.writeZeroes: allowed = F.fua | F.noHole
        case C.blockStatus: allowed = F.reqOne
        default:
            return NBDError(.invalid, "command \(r.type) is not supported")
        }
        if r.flags & ~allowed != 0 {
            return NBDError(.invalid, "flags 0x\(String(r.flags, radix: 16)) are not valid for command \(r.type)")
        }
        if r.type == C.flush {
            return info.canFlush ? nil : NBDError(.invalid, "this export does not support FLUSH")
        }
        if r.type == C.write || r.type == C.trim || r.type == C.writeZeroes {
            if info.readOnly { return NBDError(.permission, "export \"\(info.name)\" is read-only") }
            if r.type == C.trim && !info.canTrim { return NBDError(.invalid, "this export does not support TRIM") }
            if r.type == C.writeZeroes && !info.canWriteZeroes {
                return NBDError(.invalid, "this export does not support WRITE_ZEROES")
            }
        }
        if r.length == 0 { return NBDError(.invalid, "zero-length request") }
        if (r.type == C.read || r.type == C.write) && r.length > NBDProtocol.maximumPayload {
            return NBDError(.invalid, "request of \(r.length) bytes exceeds the maximum of \(NBDProtocol.maximumPayload)")
        }
        let (end, overflow) = r.offset.addingReportingOverflow(UInt64(r.length))
        if overflow || end > info.size {
            return NBDError(.invalid, "request [\(r.offset), +\(r.length)) runs past the end of the export (\(info.size) bytes)")
        }
        if r.type == C.blockStatus && (!session.structuredReplies || session.contexts.isEmpty) {
            return NBDError(.invalid, "BLOCK_STATUS needs structured replies and a meta context selected with NBD_OPT_SET_META_CONTEXT")
        }
        return nil
    }

    /// Runs a validated request against the export and returns the whole reply. Blocking: call
    /// it on a thread pool. Export errors become error replies; this never throws.
    package static func perform(_ r: NBDRequest, session: NBDSession, allocator: ByteBufferAllocator) -> ByteBuffer {
        typealias C = NBDProtocol.Command
        typealias F = NBDProtocol.CommandFlag
        let export = session.export
        let structured = session.structuredReplies
        do {
            switch r.type {
            case C.read:
                return try read(r, export: export, structured: structured, allocator: allocator)
            case C.write:
                guard let payload = r.payload, payload.readableBytes == Int(r.length) else {
                    throw NBDError(.invalid, "WRITE payload does not match its length")
                }
                try payload.withUnsafeReadableBytes { try export.write(offset: r.offset, data: $0, fua: r.flags & F.fua != 0) }
            case C.flush:
                try export.flush()
            case C.trim:
                try export.trim(offset: r.offset, length: r.length, fua: r.flags & F.fua != 0)
            case C.writeZeroes:
                try export.writeZeroes(offset: r.offset, length: r.length, noHole: r.flags & F.noHole != 0,
                                       fua: r.flags & F.fua != 0)
            case C.blockStatus:
                return try blockStatus(r, session: session, allocator: allocator)
            default:
                throw NBDError(.invalid, "command \(r.type) is not supported")
            }
            return NBDReply.success(cookie: r.cookie, structured: structured, allocator: allocator)
        } catch {
            return NBDReply.error(export.nbdError(for: error), cookie: r.cookie, structured: structured, allocator: allocator)
        }
    }

    /// The whole reply to a validated READ if the export can serve it without blocking
    /// (`NBDExport.readIfCached`), nil otherwise. Safe on the event loop.
    package static func readIfCached(_ r: NBDRequest, session: NBDSession, allocator: ByteBufferAllocator) -> ByteBuffer? {
        let length = Int(r.length)
        let export = session.export
        var b = readReplyHeader(r, structured: session.structuredReplies, allocator: allocator)
        var served = false
        b.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
            served = export.readIfCached(offset: r.offset, into: UnsafeMutableRawBufferPointer(rebasing: space[0..<length]))
            return served ? length : 0
        }
        return served ? b : nil
    }

    private static func read(_ r: NBDRequest, export: any NBDExport, structured: Bool,
                             allocator: ByteBufferAllocator) throws -> ByteBuffer {
        let length = Int(r.length)
        var b = readReplyHeader(r, structured: structured, allocator: allocator)
        // The export reads straight into the reply buffer: no intermediate copy.
        try b.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
            try export.read(offset: r.offset, into: UnsafeMutableRawBufferPointer(rebasing: space[0..<length]))
            return length
        }
        return b
    }

    /// A buffer sized for the whole READ reply, holding its header; the data goes right after.
    private static func readReplyHeader(_ r: NBDRequest, structured: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        var b = allocator.buffer(capacity: NBDReply.chunkHeaderSize + 8 + Int(r.length))
        if structured {
            NBDReply.writeChunkHeader(into: &b, cookie: r.cookie, type: NBDProtocol.ChunkType.offsetData, done: true,
                                      length: 8 + r.length)
            b.writeInteger(r.offset)
        } else {
            NBDReply.writeSimple(into: &b, cookie: r.cookie)
        }
        return b
    }

    private static func blockStatus(_ r: NBDRequest, session: NBDSession, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        let reqOne = r.flags & NBDProtocol.CommandFlag.reqOne != 0
        var b = allocator.buffer(capacity: 64)
        for (index, context) in session.contexts.enumerated() {
            let raw = try session.export.blockStatus(context: context.name, offset: r.offset, length: r.length)
            let extents = normalize(raw, length: r.length, reqOne: reqOne)
            guard !extents.isEmpty else {
                throw NBDError(.io, "the export returned no block status for \(context.name) at \(r.offset)")
            }
            NBDReply.writeBlockStatus(into: &b, cookie: r.cookie, contextID: context.id, extents: extents,
                                      done: index == session.contexts.count - 1)
        }
        return b
    }

    /// Drops empty extents and clips the list so it never describes bytes past the request;
    /// with REQ_ONE keeps only the first. The export's statuses are never altered.
    package static func normalize(_ extents: [NBDBlockStatusExtent], length: UInt32, reqOne: Bool) -> [NBDBlockStatusExtent] {
        var out: [NBDBlockStatusExtent] = []
        var remaining = length
        for e in extents where e.length > 0 {
            // proto.md: a reply SHOULD stay under 2^20 descriptors; the client asks again for the rest.
            guard remaining > 0, out.count < 1 << 20 else { break }
            let n = min(e.length, remaining)
            out.append(NBDBlockStatusExtent(length: n, flags: e.flags))
            remaining -= n
            if reqOne { break }
        }
        return out
    }
}
