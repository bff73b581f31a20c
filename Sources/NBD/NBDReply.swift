import NIOCore

/// Encoders for transmission-phase replies (simple replies and structured reply chunks).
package enum NBDReply {
    /// Simple reply header size: magic(32) error(32) cookie(64).
    static let simpleHeaderSize = 16
    /// Structured chunk header size: magic(32) flags(16) type(16) cookie(64) length(32).
    static let chunkHeaderSize = 20

    package static func writeSimple(into b: inout ByteBuffer, cookie: UInt64, error: UInt32 = 0) {
        b.writeMultipleIntegers(NBDProtocol.simpleReplyMagic, error, cookie)
    }

    package static func writeChunkHeader(into b: inout ByteBuffer, cookie: UInt64, type: UInt16, done: Bool, length: UInt32) {
        b.writeMultipleIntegers(NBDProtocol.structuredReplyMagic, done ? NBDProtocol.ReplyFlag.done : 0, type, cookie, length)
    }

    /// The final answer to a request that failed: a simple error reply, or an ERROR chunk.
    package static func error(_ error: NBDError, cookie: UInt64, structured: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard structured else {
            var b = allocator.buffer(capacity: simpleHeaderSize)
            writeSimple(into: &b, cookie: cookie, error: error.wireErrno)
            return b
        }
        // The message is for humans and optional; keep it well inside proto.md's 4096-byte limit.
        let message = Array(error.message.utf8.prefix(1024))
        var b = allocator.buffer(capacity: chunkHeaderSize + 6 + message.count)
        writeChunkHeader(into: &b, cookie: cookie, type: NBDProtocol.ChunkType.error, done: true,
                         length: UInt32(6 + message.count))
        b.writeInteger(error.wireErrno)
        b.writeInteger(UInt16(message.count))
        b.writeBytes(message)
        return b
    }

    /// Success without data (WRITE, FLUSH, TRIM, WRITE_ZEROES).
    package static func success(cookie: UInt64, structured: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        // A simple reply is valid even after structured replies were negotiated, for
        // commands without data (proto.md), and it is what qemu sends.
        var b = allocator.buffer(capacity: simpleHeaderSize)
        writeSimple(into: &b, cookie: cookie)
        return b
    }

    /// One BLOCK_STATUS chunk for one context.
    package static func writeBlockStatus(into b: inout ByteBuffer, cookie: UInt64, contextID: UInt32,
                                         extents: [NBDBlockStatusExtent], done: Bool) {
        writeChunkHeader(into: &b, cookie: cookie, type: NBDProtocol.ChunkType.blockStatus, done: done,
                         length: UInt32(4 + 8 * extents.count))
        b.writeInteger(contextID)
        for e in extents { b.writeMultipleIntegers(e.length, e.flags) }
    }
}
