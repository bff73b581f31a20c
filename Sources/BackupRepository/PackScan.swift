import BlockIO
import Codecs

/// Reading packs piecewise: the trailer alone (a structural check reads only the tail of
/// each pack), and a walk over the envelopes for packs whose trailer is damaged.
enum PackScan {
    /// Reads and checks a pack's footer and trailer (two small reads at the end of the file).
    static func trailer(of id: PackID, size: UInt64, in store: any ObjectStore) throws -> [PackEntry] {
        let object = "pack \(id)"
        let footerSize = UInt64(PackFile.footerSize)
        guard size >= UInt64(PackFile.headerSize) + footerSize else {
            throw RepositoryError.damaged(object, "only \(size) bytes long (truncated)")
        }
        let footer = try store.get(ObjectKey(.pack, id.hex), range: ByteRange(offset: size - footerSize, length: footerSize))
        var f = ByteReader(footer)
        let trailerOffset: UInt64
        do {
            trailerOffset = try f.u64()
            guard try f.expect("TPAKEND1") else { throw RepositoryError.damaged(object, "footer magic missing (truncated?)") }
        } catch is ShortData {
            throw RepositoryError.damaged(object, "footer truncated")
        }
        guard trailerOffset >= UInt64(PackFile.headerSize), trailerOffset <= size - footerSize else {
            throw RepositoryError.damaged(object, "trailer offset \(trailerOffset) out of range")
        }
        let tail = try store.get(ObjectKey(.pack, id.hex), range: ByteRange(offset: trailerOffset, length: size - trailerOffset))
        return try parseTrailer(tail, trailerOffset: trailerOffset, object: object)
    }

    /// Parses the trailer from `tail` (the pack's bytes from the trailer offset to its end).
    static func parseTrailer(_ tail: [UInt8], trailerOffset: UInt64, object: String) throws -> [PackEntry] {
        do {
            var t = ByteReader(tail)
            guard try t.expect("TPTR") else { throw RepositoryError.damaged(object, "trailer magic missing") }
            let count = Int(try t.u32())
            guard count <= tail.count / PackFile.trailerEntrySize,
                  8 + count * PackFile.trailerEntrySize + 8 + PackFile.footerSize == tail.count else {
                throw RepositoryError.damaged(object, "trailer length does not match its entry count")
            }
            var entries: [PackEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let id = try t.digest()
                let offset = try t.u64()
                let length = Int(try t.u32())
                let raw = Int(try t.u32())
                guard offset >= UInt64(PackFile.headerSize), offset <= trailerOffset, UInt64(length) <= trailerOffset - offset else {
                    throw RepositoryError.damaged(object, "trailer entry for chunk \(id) points outside the pack")
                }
                entries.append(PackEntry(id: id, offset: offset, length: length, rawLength: raw))
            }
            let end = 8 + count * PackFile.trailerEntrySize
            let stored = try t.u64()
            let computed = tail.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
            guard stored == computed else { throw RepositoryError.damaged(object, "trailer checksum mismatch") }
            return entries
        } catch is ShortData {
            throw RepositoryError.damaged(object, "trailer truncated")
        }
    }

    /// Walks the envelopes from offset 8 and returns every chunk whose envelope header and
    /// stored-bytes checksum verify. Stops at the first envelope that does not parse
    /// (the trailer, or damage: nothing after it can be located without the trailer).
    static func walkEnvelopes(_ bytes: [UInt8], id: PackID) -> [PackEntry] {
        var out: [PackEntry] = []
        var at = PackFile.headerSize
        while at + ObjectEnvelope.headerSize <= bytes.count {
            guard let h = try? ObjectEnvelope.parseHeader(.chunk, bytes, at: at, object: "pack \(id)") else { break }
            let start = at + ObjectEnvelope.headerSize
            guard h.storedLength <= bytes.count - start else { break }
            let sum = bytes.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[start..<start + h.storedLength])) }
            if sum == h.payloadChecksum {
                out.append(PackEntry(id: h.id, offset: UInt64(at), length: h.totalLength, rawLength: h.rawLength))
            }
            at = start + h.storedLength
        }
        return out
    }
}
