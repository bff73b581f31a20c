import Codecs

/// One line of an index file: a chunk and where it is.
public struct IndexEntry: Sendable, Equatable {
    public var chunk: ChunkID
    public var pack: PackID
    public var offset: UInt64
    public var length: Int
    public var rawLength: Int

    public init(chunk: ChunkID, pack: PackID, offset: UInt64, length: Int, rawLength: Int) {
        self.chunk = chunk
        self.pack = pack
        self.offset = offset
        self.length = length
        self.rawLength = rawLength
    }
}

/// Index files map chunk IDs to their packs. Written only after the packs they name are
/// durable; each is named by the XXH3-128 of its bytes.
///
/// ```
/// "TIDX" u32 version=1 u64 count
/// count × { chunk ID 16, pack ID 16, offset u64, length u32, raw length u32 }   (48 bytes each)
/// u64 XXH3-64 of everything before
/// ```
enum IndexFile {
    static let version: UInt32 = 1
    static let entrySize = 48

    /// The size of an index file of `entries` entries.
    static func encodedSize(entries: Int) -> UInt64 {
        UInt64(16 + entries * entrySize + 8)
    }

    static func encode(_ entries: [IndexEntry]) -> (name: String, bytes: [UInt8]) {
        var w = ByteWriter(capacity: 16 + entries.count * entrySize + 8)
        w.ascii("TIDX")
        w.u32(version)
        w.u64(UInt64(entries.count))
        for e in entries {
            w.digest(e.chunk)
            w.digest(e.pack)
            w.u64(e.offset)
            w.u32(UInt32(e.length))
            w.u32(UInt32(e.rawLength))
        }
        w.u64(XXH3.hash64(w.bytes))
        return (XXH3.hash128(w.bytes).hex, w.bytes)
    }

    static func decode(_ bytes: [UInt8], name: String) throws -> [IndexEntry] {
        let object = "index file \(name)"
        do {
            var r = ByteReader(bytes)
            guard try r.expect("TIDX") else { throw RepositoryError.damaged(object, "wrong magic (not an index file)") }
            let v = try r.u32()
            guard v == version else {
                throw RepositoryError(.newerVersion, "\(object) has format version \(v); this build reads \(version): upgrade tessera", object: object)
            }
            let count = try r.u64()
            guard count <= UInt64(bytes.count / entrySize), bytes.count == 16 + Int(count) * entrySize + 8 else {
                throw RepositoryError.damaged(object, "length does not match its entry count (truncated?)")
            }
            let sum = bytes.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[0..<bytes.count - 8])) }
            var c = ByteReader(bytes, offset: bytes.count - 8)
            guard try c.u64() == sum else { throw RepositoryError.damaged(object, "checksum mismatch") }
            guard XXH3.hash128(bytes).hex == name else {
                throw RepositoryError.damaged(object, "the file does not hash to its name (swapped or renamed)")
            }
            var out: [IndexEntry] = []
            out.reserveCapacity(Int(count))
            for _ in 0..<count {
                out.append(IndexEntry(chunk: try r.digest(), pack: try r.digest(), offset: try r.u64(),
                                      length: Int(try r.u32()), rawLength: Int(try r.u32())))
            }
            return out
        } catch is ShortData {
            throw RepositoryError.damaged(object, "truncated")
        }
    }
}
