import BlockIO
import NBD
import Foundation

/// Where a backup reads a disk's bytes from.
public protocol DiskSource: Sendable {
    var size: UInt64 { get }
    var description: String { get }
    /// Whether several threads may read at once (files: yes; one NBD connection: no).
    var allowsConcurrentReads: Bool { get }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    /// The ranges that may hold data; everything else reads as zeroes (holes).
    func dataRanges(in range: ByteRange) throws -> [ByteRange]
    /// Hints that `range` will be read soon, so the source can start fetching it. Advisory.
    func prefetch(_ range: ByteRange)
}

extension DiskSource {
    public func prefetch(_ range: ByteRange) {}
}

/// A raw file or a VMDK descriptor with flat extents.
public struct ImageSource: DiskSource {
    public let image: DiskImage
    public var size: UInt64 { image.size }
    public var description: String { image.path }
    public var allowsConcurrentReads: Bool { true }

    public init(path: String) throws {
        do {
            image = try DiskImage.open(path: path, writable: false)
        } catch let e as BlockIOError {
            throw AgentError(.source, "cannot open the source disk: \(e.message)", cause: e)
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try image.read(into: buffer, at: offset)
    }

    public func dataRanges(in range: ByteRange) throws -> [ByteRange] {
        try image.dataRanges(in: range)
    }

    /// The page cache reads ahead while the workers hash and compress, and an incremental's
    /// scattered blocks are all requested at once instead of one by one.
    public func prefetch(_ range: ByteRange) {
        image.prefetch(range)
    }
}

/// An NBD export (qemu-nbd, QEMU's NBD server, or our own filter).
///
/// One connection, used by one thread at a time (the lock): qemu-nbd serves a single client
/// by default, and NBDClient is a blocking, one-request-at-a-time client.
public final class NBDSource: DiskSource, @unchecked Sendable {
    private let connection: NBDClient
    private let lock = NSLock()
    public let size: UInt64
    public let description: String
    private let hasAllocation: Bool
    public var allowsConcurrentReads: Bool { false }

    public init(uri: String, contexts: [String]) throws {
        let parsed = try NBDURI(parsing: uri)
        let c = try NBDClient.connect(parsed, metaContexts: contexts + ["base:allocation"])
        size = c.exportSize
        hasAllocation = c.negotiatedContexts.contains("base:allocation")
        description = uri
        connection = c
    }

    public var negotiatedContexts: [String] { lock.withLock { connection.negotiatedContexts } }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        // NBD requests are limited in size; read in pieces.
        let step = 4 << 20
        var done = 0
        try lock.withLock { let c = connection
            while done < buffer.count {
                let n = min(step, buffer.count - done)
                try c.read(offset: offset + UInt64(done), length: UInt32(n),
                           into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + n)]))
                done += n
            }
        }
    }

    /// Extents of a meta context, as ranges with their status flags, covering `range`.
    public func status(context: String, in range: ByteRange) throws -> [(ByteRange, UInt32)] {
        var out: [(ByteRange, UInt32)] = []
        var at = range.offset
        try lock.withLock { let c = connection
            while at < range.end {
                let length = UInt32(min(range.end - at, 1 << 30))
                let extents = try c.blockStatus(context: context, offset: at, length: length)
                guard !extents.isEmpty else {
                    throw AgentError(.source, "the NBD server sent no extents for \(context) at offset \(at)")
                }
                for e in extents where at < range.end {
                    let len = min(UInt64(e.length), range.end - at)
                    guard len > 0 else { throw AgentError(.source, "the NBD server sent a zero-length extent for \(context)") }
                    out.append((ByteRange(offset: at, length: len), e.flags))
                    at += len
                }
            }
        }
        return out
    }

    public func dataRanges(in range: ByteRange) throws -> [ByteRange] {
        guard hasAllocation else { return [range] }
        // NBD_STATE_HOLE (bit 0) with NBD_STATE_ZERO (bit 1): reads as zeroes, skip it.
        return try status(context: "base:allocation", in: range).filter { $0.1 & 3 != 3 }.map(\.0).coalesced()
    }
}
