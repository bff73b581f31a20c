import Codecs

/// The on-disk form of disk maps: pages of entries stored as content-addressed objects,
/// and a small map object that lists them.
///
/// Page (raw form, then wrapped in an `ObjectEnvelope` of kind "TPAG", zstd-compressed):
/// up to `entriesPerPage` × 16-byte chunk IDs (big-endian; all-zero bytes = zero chunk).
/// Page ID = XXH3-128 of the raw form, so unchanged pages are shared between snapshots.
///
/// Map object (`maps/xx/<id>.map`, ID = XXH3-128 of the whole object):
/// ```
/// "TMAP" u32 version=1
/// u64 disk size, u32 chunk size, u32 entries per page, u64 entry count, u32 page count, u32 0
/// page count × page ID (16)
/// u64 XXH3-64 of everything before
/// ```
enum DiskMapCodec {
    static let version: UInt32 = 1
    static let entriesPerPage = 4096
    static let headerSize = 40

    struct Header: Equatable {
        var diskSize: UInt64
        var chunkSize: Int
        var entriesPerPage: Int
        var entryCount: Int
        var pageCount: Int
    }

    /// The raw bytes of page `p` of a map.
    static func page(_ map: DiskMap, _ p: Int, entriesPerPage: Int = entriesPerPage) -> [UInt8] {
        let lo = p * entriesPerPage, hi = min(lo + entriesPerPage, map.count)
        var w = ByteWriter(capacity: (hi - lo) * 16)
        for i in lo..<hi { w.digest(map.ids[i]) }
        return w.bytes
    }

    static func pageCount(entries: Int, entriesPerPage: Int = entriesPerPage) -> Int {
        (entries + entriesPerPage - 1) / entriesPerPage
    }

    static func encodeMap(_ map: DiskMap, pageIDs: [Digest128]) -> (id: DiskMapID, bytes: [UInt8]) {
        var w = ByteWriter(capacity: headerSize + pageIDs.count * 16 + 8)
        w.ascii("TMAP")
        w.u32(version)
        w.u64(map.diskSize)
        w.u32(UInt32(map.chunkSize))
        w.u32(UInt32(entriesPerPage))
        w.u64(UInt64(map.count))
        w.u32(UInt32(pageIDs.count))
        w.u32(0)
        for id in pageIDs { w.digest(id) }
        w.u64(XXH3.hash64(w.bytes))
        return (XXH3.hash128(w.bytes), w.bytes)
    }

    static func decodeMap(_ bytes: [UInt8], id: DiskMapID) throws -> (Header, [Digest128]) {
        let object = "disk map \(id)"
        do {
            var r = ByteReader(bytes)
            guard try r.expect("TMAP") else { throw RepositoryError.damaged(object, "wrong magic (not a disk map)") }
            let v = try r.u32()
            guard v == version else {
                throw RepositoryError(.newerVersion, "\(object) has format version \(v); this build reads \(version): upgrade tessera", object: object)
            }
            let h = Header(diskSize: try r.u64(), chunkSize: Int(try r.u32()), entriesPerPage: Int(try r.u32()),
                           entryCount: Int(clamping: try r.u64()), pageCount: Int(try r.u32()))
            _ = try r.u32()
            guard bytes.count == headerSize + h.pageCount * 16 + 8 else {
                throw RepositoryError.damaged(object, "length does not match its page count (truncated?)")
            }
            let sum = bytes.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[0..<bytes.count - 8])) }
            var c = ByteReader(bytes, offset: bytes.count - 8)
            guard try c.u64() == sum else { throw RepositoryError.damaged(object, "checksum mismatch") }
            guard XXH3.hash128(bytes) == id else {
                throw RepositoryError.damaged(object, "the object does not hash to its name (swapped or renamed)")
            }
            guard DiskMap.isValidChunkSize(h.chunkSize), h.entriesPerPage > 0, h.entriesPerPage <= 1 << 20,
                  h.entryCount <= Int(Int32.max),
                  UInt64(h.entryCount) == DiskMap.chunkCount(diskSize: h.diskSize, chunkSize: h.chunkSize),
                  h.pageCount == pageCount(entries: h.entryCount, entriesPerPage: h.entriesPerPage) else {
                throw RepositoryError.damaged(object, "header is inconsistent (disk size, chunk size, entry and page counts disagree)")
            }
            var pages: [Digest128] = []
            pages.reserveCapacity(h.pageCount)
            for _ in 0..<h.pageCount { pages.append(try r.digest()) }
            return (h, pages)
        } catch is ShortData {
            throw RepositoryError.damaged(object, "truncated")
        }
    }
}
