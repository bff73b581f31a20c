import BackupRepository
import BlockIO

/// What a backup reads and what it starts from, decided before a byte is read. Pure: made
/// from the base's disk map, what the change source says and which chunks the repository
/// holds, so it is tested without files.
///
/// Every snapshot is a synthetic full: an incremental starts from the base's map (unchanged
/// chunks carried over) and reads only the changed chunks; a full read starts from an
/// all-zero map and reads every allocated range (holes stay zero entries).
public struct BackupPlan: Sendable {
    /// The map before the read chunks are filled in.
    public var map: DiskMap
    /// Chunk-aligned segments to read, in disk order.
    public var segments: [ByteRange]
    /// Whether `map` starts from the base (an incremental).
    public var incremental: Bool
    /// Whole chunks a trim or write-zeroes emptied since the base: zero entries, not read.
    public var zeroedChunks: Int
    /// Carried-over chunks the repository no longer holds (damaged and set aside, lost): read
    /// again from the disk whatever the change source says.
    public var healedChunks: Int

    /// - Parameters:
    ///   - allocated: the disk's allocated ranges, used when everything is read.
    ///   - isStored: whether the repository holds a chunk.
    public static func make(diskSize: UInt64, chunkSize: Int, base: BackupBase?, changes: ChangeSet,
                            allocated: [ByteRange], isStored: (ChunkID) -> Bool) throws -> BackupPlan {
        let chunk = UInt64(chunkSize)
        guard case .since(let data, let zeroed) = changes, let base else {
            return BackupPlan(map: try DiskMap(diskSize: diskSize, chunkSize: chunkSize),
                              segments: ChunkPipeline.segments(for: allocated, chunkSize: chunk, diskSize: diskSize),
                              incremental: false, zeroedChunks: 0, healedChunks: 0)
        }
        var map = base.map.diskSize == diskSize ? base.map : try DiskMap(copying: base.map, resizedTo: diskSize)
        // Ranges trimmed or zeroed since the base: whole chunks become zero entries without a
        // read (the last, partial chunk too when the range reaches the end of the disk);
        // the partial chunks at their edges are read.
        var zeroChunks: [ByteRange] = []
        var zeroedChunks = 0
        for z in zeroed {
            let first = (z.offset + chunk - 1) / chunk
            let end = z.end >= diskSize ? (diskSize + chunk - 1) / chunk : z.end / chunk
            guard first < end else { continue }
            for i in first..<end { map[Int(i)] = nil }
            zeroedChunks += Int(end - first)
            zeroChunks.append(ByteRange(offset: first * chunk, length: min(end * chunk, diskSize) - first * chunk))
        }
        var toRead = ChunkPipeline.subtract(zeroChunks.coalesced(), from: (data + zeroed).coalesced())
        // Self-healing: a carried-over chunk that is gone from the repository is read again.
        var healed = 0
        for i in 0..<map.count {
            if let id = map[i], !isStored(id) {
                toRead.append(map.byteRange(ofChunk: i))
                healed += 1
            }
        }
        return BackupPlan(map: map, segments: ChunkPipeline.segments(for: toRead, chunkSize: chunk, diskSize: diskSize),
                          incremental: true, zeroedChunks: zeroedChunks, healedChunks: healed)
    }

    public var bytesToRead: UInt64 { segments.totalLength }
}
