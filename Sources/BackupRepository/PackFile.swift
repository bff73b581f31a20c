import Codecs

/// One chunk listed in a pack's trailer (and in index files).
public struct PackEntry: Sendable, Equatable {
    public var id: ChunkID
    /// Offset of the chunk's envelope in the pack.
    public var offset: UInt64
    /// Envelope length (header + stored payload).
    public var length: Int
    /// Uncompressed chunk length.
    public var rawLength: Int
}

/// The pack format: many chunk envelopes in one file, with a trailer that lists them.
///
/// ```
/// "TPAK" u32 version=1                      8-byte header
/// envelope, envelope, …                      (ObjectEnvelope, magic "TCHK")
/// trailer: "TPTR" u32 count
///          count × { ID 16, offset u64, length u32, raw length u32 }   (32 bytes each)
///          u64 XXH3-64 of the trailer bytes before it
/// footer:  u64 trailer offset, "TPAKEND1"   (16 bytes)
/// ```
/// The pack's name is the XXH3-128 of the whole file, so a pack swapped for another
/// is recognised, and the trailer makes every pack self-describing (index rebuild).
enum PackFile {
    static let headerSize = 8
    static let footerSize = 16
    static let trailerEntrySize = 32
    static let version: UInt32 = 1

    /// The size of a pack holding `count` envelopes of `envelopeBytes` bytes in all:
    /// header, envelopes, trailer (8 + 32 per entry + 8) and footer.
    static func size(envelopeBytes: UInt64, count: Int) -> UInt64 {
        UInt64(headerSize) + envelopeBytes + 8 + UInt64(count * trailerEntrySize) + 8 + UInt64(footerSize)
    }

    static func header() -> [UInt8] {
        var w = ByteWriter()
        w.ascii("TPAK")
        w.u32(version)
        return w.bytes
    }

    /// The trailer and footer that end a pack whose envelopes end at `trailerOffset`.
    static func trailer(entries: [PackEntry], trailerOffset: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: 8 + entries.count * trailerEntrySize + 8 + footerSize)
        w.ascii("TPTR")
        w.u32(UInt32(entries.count))
        for e in entries {
            w.digest(e.id)
            w.u64(e.offset)
            w.u32(UInt32(e.length))
            w.u32(UInt32(e.rawLength))
        }
        w.u64(XXH3.hash64(w.bytes))
        w.u64(trailerOffset)
        w.ascii("TPAKEND1")
        return w.bytes
    }

    /// Reads and checks a whole pack: header, footer, trailer checksum, and (with
    /// `verifyEnvelopes`) every envelope header and stored-bytes checksum.
    static func parse(_ bytes: [UInt8], id: PackID, verifyEnvelopes: Bool) throws -> [PackEntry] {
        let object = "pack \(id)"
        guard bytes.count >= headerSize + footerSize else { throw RepositoryError.damaged(object, "only \(bytes.count) bytes long (truncated)") }
        do {
            var r = ByteReader(bytes)
            guard try r.expect("TPAK") else { throw RepositoryError.damaged(object, "wrong magic (not a pack)") }
            let v = try r.u32()
            guard v == version else {
                throw RepositoryError(.newerVersion, "\(object) has format version \(v); this build reads \(version): upgrade tessera", object: object)
            }
            var f = ByteReader(bytes, offset: bytes.count - footerSize)
            let trailerOffset = try f.u64()
            guard try f.expect("TPAKEND1") else { throw RepositoryError.damaged(object, "footer magic missing (truncated?)") }
            guard trailerOffset >= UInt64(headerSize), trailerOffset <= UInt64(bytes.count - footerSize) else {
                throw RepositoryError.damaged(object, "trailer offset \(trailerOffset) out of range")
            }
            // One trailer parser for whole packs and for scans that read only the tail.
            let entries = try PackScan.parseTrailer(Array(bytes[Int(trailerOffset)...]), trailerOffset: trailerOffset, object: object)
            if verifyEnvelopes {
                for e in entries {
                    let what = "chunk \(e.id) in pack \(id)"
                    let h = try ObjectEnvelope.parseHeader(.chunk, bytes, at: Int(e.offset), object: what)
                    guard h.id == e.id, h.totalLength == e.length, h.rawLength == e.rawLength else {
                        throw RepositoryError.damaged(object, "trailer and envelope disagree about chunk \(e.id)")
                    }
                    let start = Int(e.offset) + ObjectEnvelope.headerSize
                    let sum = bytes.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[start..<start + h.storedLength])) }
                    guard sum == h.payloadChecksum else { throw RepositoryError.damaged(what, "stored bytes checksum mismatch") }
                }
                guard XXH3.hash128(bytes) == id else {
                    throw RepositoryError.damaged(object, "the file does not hash to its name (swapped or renamed)")
                }
            }
            return entries
        } catch is ShortData {
            throw RepositoryError.damaged(object, "truncated")
        }
    }
}

/// A pack being written: each envelope goes straight to the pack's object stream and
/// through the running hash that becomes the pack's name, so memory holds only the trailer
/// entries, never the pack. Not thread-safe: its owner serialises appends (the writer's lock).
final class PackSink {
    private let stream: any ObjectStream
    private var hasher = XXH3Stream128()
    private(set) var entries: [PackEntry] = []
    private(set) var byteCount = 0

    init(_ stream: any ObjectStream) throws {
        self.stream = stream
        // No owner holds the sink yet if the header fails: remove its temp object here.
        do { try write(PackFile.header()) } catch { stream.discard(); throw error }
    }

    private func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    private func write(_ bytes: UnsafeRawBufferPointer) throws {
        try stream.append(bytes)
        hasher.update(bytes)
        byteCount += bytes.count
    }

    func append(envelope: [UInt8], id: ChunkID, rawLength: Int) throws {
        let entry = PackEntry(id: id, offset: UInt64(byteCount), length: envelope.count, rawLength: rawLength)
        try write(envelope)
        entries.append(entry)
    }

    /// Writes trailer and footer; the pack is then complete but not yet durable or visible.
    func seal() throws -> SealedPack {
        try write(PackFile.trailer(entries: entries, trailerOffset: UInt64(byteCount)))
        return SealedPack(stream: stream, id: hasher.finalize(), entries: entries)
    }

    /// Gives up the pack (its temp object is removed).
    func discard() { stream.discard() }
}

/// A complete pack waiting to be made durable and visible under its name.
struct SealedPack: Sendable {
    let stream: any ObjectStream
    let id: PackID
    let entries: [PackEntry]

    /// fsync, rename into place (name durable at the store's next directory sync).
    func finish() throws { try stream.finish(as: id.hex) }
}
