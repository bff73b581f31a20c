import Codecs

/// The self-describing envelope around every stored chunk and map page.
///
/// ```
/// offset size field
///      0    4 magic            "TCHK" (chunk) or "TPAG" (map page)
///      4    1 version          1
///      5    1 flags            bit 0: payload is zstd-compressed (else raw)
///      6    2 reserved         0
///      8    4 raw length       uncompressed bytes
///     12    4 stored length    payload bytes that follow the header
///     16   16 ID               XXH3-128 of the raw bytes (big-endian)
///     32    8 payload checksum XXH3-64 of the stored payload
///     40    8 header checksum  XXH3-64 of bytes 0..<40
///     48    … payload
/// ```
/// All integers little-endian. A damaged envelope is recognised without any index, and
/// an index can be rebuilt by walking envelopes.
struct ObjectEnvelope: Equatable {
    static let headerSize = 48
    static let version: UInt8 = 1
    static let flagCompressed: UInt8 = 1

    enum Kind {
        case chunk, mapPage
        var magic: StaticString { self == .chunk ? "TCHK" : "TPAG" }
    }

    var compressed: Bool
    var rawLength: Int
    var storedLength: Int
    var id: Digest128
    var payloadChecksum: UInt64

    var totalLength: Int { Self.headerSize + storedLength }

    /// Builds an envelope: compresses `raw` and keeps the compressed form only when it is smaller.
    static func encode(_ kind: Kind, id: Digest128, raw: UnsafeRawBufferPointer, compressor: borrowing ZstdCompressor) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: headerSize + Zstd.compressBound(raw.count))
        var stored = 0
        var compressed = false
        do {
            stored = try out.withUnsafeMutableBytes { buf in
                try compressor.compress(raw, into: UnsafeMutableRawBufferPointer(rebasing: buf[headerSize...]))
            }
            compressed = stored < raw.count
        } catch {
            throw RepositoryError(.io, "compressing \(kind == .chunk ? "chunk" : "map page") \(id) failed: \(error)", cause: error)
        }
        if !compressed {
            stored = raw.count
            out.withUnsafeMutableBytes { buf in
                if let base = raw.baseAddress, stored > 0 {
                    (buf.baseAddress! + headerSize).copyMemory(from: base, byteCount: stored)
                }
            }
        }
        out.removeLast(out.count - headerSize - stored)
        let checksum = out.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[headerSize...])) }
        var w = ByteWriter(capacity: headerSize)
        w.ascii(kind.magic)
        w.u8(version)
        w.u8(compressed ? flagCompressed : 0)
        w.u16(0)
        w.u32(UInt32(raw.count))
        w.u32(UInt32(stored))
        w.digest(id)
        w.u64(checksum)
        w.u64(XXH3.hash64(w.bytes))
        out.replaceSubrange(0..<headerSize, with: w.bytes)
        return out
    }

    /// Parses and checks the header at `offset` of `bytes`.
    /// - Parameter object: names the object for the error (`chunk 77c1… in pack 3fa0…`).
    static func parseHeader(_ kind: Kind, _ bytes: [UInt8], at offset: Int = 0, object: String) throws -> ObjectEnvelope {
        var r = ByteReader(bytes, offset: offset)
        do {
            guard try r.expect(kind.magic) else { throw RepositoryError.damaged(object, "wrong magic (not a \(kind.magic) envelope)") }
            let version = try r.u8()
            let flags = try r.u8()
            _ = try r.u16()
            let raw = try r.u32()
            let stored = try r.u32()
            let id = try r.digest()
            let payloadChecksum = try r.u64()
            let headerChecksum = try r.u64()
            let computed = bytes.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[offset..<offset + 40])) }
            guard computed == headerChecksum else { throw RepositoryError.damaged(object, "envelope header checksum mismatch") }
            guard version == Self.version else {
                throw RepositoryError(.newerVersion, "\(object) has envelope version \(version); this build reads version \(Self.version): upgrade tessera",
                                      object: object)
            }
            guard flags & ~flagCompressed == 0 else { throw RepositoryError.damaged(object, "unknown envelope flags \(flags)") }
            return ObjectEnvelope(compressed: flags & flagCompressed != 0, rawLength: Int(raw), storedLength: Int(stored),
                                  id: id, payloadChecksum: payloadChecksum)
        } catch is ShortData {
            throw RepositoryError.damaged(object, "envelope header is truncated")
        }
    }

    /// Checks the payload checksum, decompresses into `destination` and re-hashes the result.
    /// Returns the raw length.
    static func decode(_ kind: Kind, _ bytes: [UInt8], at offset: Int = 0, expectedID: Digest128, object: String,
                       into destination: UnsafeMutableRawBufferPointer, decompressor: borrowing ZstdDecompressor) throws -> Int {
        let header = try parseHeader(kind, bytes, at: offset, object: object)
        guard header.id == expectedID else {
            throw RepositoryError.damaged(object, "envelope holds \(header.id) instead (swapped or misplaced object)")
        }
        let start = offset + headerSize
        guard start + header.storedLength <= bytes.count else {
            throw RepositoryError.damaged(object, "payload is truncated (\(bytes.count - start) of \(header.storedLength) bytes)")
        }
        guard destination.count >= header.rawLength else {
            throw RepositoryError(.invalidArgument, "buffer of \(destination.count) bytes is too small for \(object) (\(header.rawLength) bytes)",
                                  object: object)
        }
        return try bytes.withUnsafeBytes { all in
            let payload = UnsafeRawBufferPointer(rebasing: all[start..<start + header.storedLength])
            guard XXH3.hash64(payload) == header.payloadChecksum else {
                throw RepositoryError.damaged(object, "stored bytes checksum mismatch")
            }
            let out = UnsafeMutableRawBufferPointer(rebasing: destination[0..<header.rawLength])
            if header.compressed {
                let n: Int
                do { n = try decompressor.decompress(payload, into: out) } catch {
                    throw RepositoryError(.damaged, "\(object) is damaged: zstd could not decompress it (\(error))",
                                          object: object, cause: error)
                }
                guard n == header.rawLength else { throw RepositoryError.damaged(object, "decompressed to \(n) bytes, expected \(header.rawLength)") }
            } else {
                guard header.storedLength == header.rawLength else { throw RepositoryError.damaged(object, "raw payload length mismatch") }
                if header.rawLength > 0 { out.baseAddress!.copyMemory(from: payload.baseAddress!, byteCount: header.rawLength) }
            }
            guard XXH3.hash128(UnsafeRawBufferPointer(out)) == expectedID else {
                throw RepositoryError.damaged(object, "content does not hash to its ID")
            }
            return header.rawLength
        }
    }
}
