import BlockIO
import Codecs
import TrackerControl
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Why a state file or activity log could not be used (internal: it becomes an open report
/// line and a new generation, never a thrown error).
struct FormatProblem: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The tracker's state file, `tracker.state`: everything needed to answer queries after a
/// clean restart. Written whole, atomically (temp + fsync + rename + directory fsync).
/// Layout (little-endian) in docs/TRACKING.md.
enum StateFile {
    static let magic: [UInt8] = Array("TESSCTRK".utf8)
    static let version: UInt32 = 1
    static let fixedHeaderSize = 168
    static let maximumReasonLength = 4096

    private static let flagCheckpointOpen: UInt32 = 1 << 0
    private static let flagHasPrevious: UInt32 = 1 << 1
    private static let flagHasLastCommitted: UInt32 = 1 << 2
    private static let flagHasIdentity: UInt32 = 1 << 3

    /// What the file holds.
    struct Contents: Sendable {
        var generation: UUID
        var generationReason: String
        var map: DirtyMap
        var checkpoint: CheckpointInfo?
        var lastCommitted: ChangeID?
        var identity: FileIdentity?
        /// Activity log records with a sequence up to this are contained in the file.
        var logSequence: UInt64
    }

    static func encode(generation: UUID, generationReason: String, map: DirtyMap, checkpoint: CheckpointInfo?,
                       lastCommitted: ChangeID?, identity: FileIdentity?, logSequence: UInt64) -> [UInt8] {
        let reason = Array(generationReason.utf8.prefix(maximumReasonLength))
        let bitmapBytes = map.zero.memoryFootprint * (map.checkpointOpen ? 3 : 1)
        var w = ByteWriter(capacity: fixedHeaderSize + reason.count + map.tags.count + bitmapBytes + 8)
        var flags: UInt32 = 0
        if checkpoint != nil && map.checkpointOpen { flags |= flagCheckpointOpen }
        if checkpoint?.previous != nil { flags |= flagHasPrevious }
        if lastCommitted != nil { flags |= flagHasLastCommitted }
        if identity != nil { flags |= flagHasIdentity }
        w.raw(magic)
        w.u32(version)
        w.u32(flags)
        w.uuid(generation)
        w.u64(map.diskSize)
        w.u64(map.granularity)
        w.u64(UInt64(map.blockCount))
        w.u64(map.baseSequence)
        w.u64(map.lastClosed)
        w.u64(logSequence)
        w.u64(checkpoint?.changeID.sequence ?? 0)
        w.u64(checkpoint?.previous?.sequence ?? 0)
        w.i64(checkpoint?.createdAt ?? 0)
        w.uuid(lastCommitted?.generation ?? UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)))
        w.u64(lastCommitted?.sequence ?? 0)
        w.u64(identity?.device ?? 0)
        w.u64(identity?.inode ?? 0)
        w.u64(identity?.size ?? 0)
        w.i64(identity?.modificationNanoseconds ?? 0)
        w.u32(UInt32(reason.count))
        w.u32(0)
        assert(w.bytes.count == fixedHeaderSize)
        w.raw(reason)
        w.raw(map.tags)
        w.words(map.zero.words)
        if let active = map.active, let activeZero = map.activeZero, checkpoint != nil {
            w.words(active.words)
            w.words(activeZero.words)
        }
        let checksum = w.bytes.withUnsafeBytes { XXH3.hash64($0) }
        w.u64(checksum)
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws(FormatProblem) -> Contents {
        do {
            return try decodeChecked(bytes)
        } catch let truncated as ShortData {
            _ = truncated
            throw FormatProblem("the state file is truncated (\(bytes.count) bytes)")
        } catch let problem as FormatProblem {
            throw problem
        } catch {
            throw FormatProblem("the state file is unreadable: \(error)")
        }
    }

    private static func decodeChecked(_ bytes: [UInt8]) throws -> Contents {
        guard bytes.count >= fixedHeaderSize + 8 else { throw ShortData() }
        guard Array(bytes[0..<8]) == magic else { throw FormatProblem("the state file has a bad magic number (not a Tessera tracker state)") }
        var r = ByteReader(bytes, offset: 8)
        let version = try r.u32()
        guard version == Self.version else {
            throw FormatProblem("the state file has version \(version); this build reads version \(Self.version)")
        }
        let stored = bytes[(bytes.count - 8)...].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let computed = bytes.withUnsafeBytes { XXH3.hash64(UnsafeRawBufferPointer(rebasing: $0[0..<(bytes.count - 8)])) }
        guard stored == computed else { throw FormatProblem("the state file checksum does not match (damaged or torn)") }

        let flags = try r.u32()
        guard flags & ~UInt32(0xF) == 0 else { throw FormatProblem("the state file has unknown flags \(flags)") }
        let generation = try r.uuid()
        let diskSize = try r.u64(), granularity = try r.u64(), blockCount = try r.u64()
        let baseSequence = try r.u64(), lastClosed = try r.u64(), logSequence = try r.u64()
        let checkpointSequence = try r.u64(), previousSequence = try r.u64(), createdAt = try r.i64()
        let committedGeneration = try r.uuid(), committedSequence = try r.u64()
        let device = try r.u64(), inode = try r.u64(), identitySize = try r.u64(), mtime = try r.i64()
        let reasonLength = Int(try r.u32())
        _ = try r.u32()

        guard granularity >= TrackerConfiguration.minimumGranularity, granularity <= TrackerConfiguration.maximumGranularity,
              granularity & (granularity - 1) == 0 else {
            throw FormatProblem("the state file has an invalid granularity \(granularity)")
        }
        guard diskSize <= TrackerConfiguration.maximumDiskSize,
              blockCount == UInt64(DirtyMap.blockCount(diskSize: diskSize, granularity: granularity)) else {
            throw FormatProblem("the state file's disk size \(diskSize) and block count \(blockCount) disagree")
        }
        // Subtract first: `lastClosed + 1` overflows for a stored UInt64.max (found by Tools/fuzz).
        guard lastClosed >= baseSequence, lastClosed - baseSequence < DirtyMap.maximumRelativeEpoch else {
            throw FormatProblem("the state file's sequences are out of range (base \(baseSequence), last closed \(lastClosed))")
        }
        guard reasonLength <= maximumReasonLength else { throw FormatProblem("the state file's reason text is too long") }
        let checkpointOpen = flags & flagCheckpointOpen != 0
        let words = (Int(blockCount) + 63) / 64
        let expectedSize = fixedHeaderSize + reasonLength + Int(blockCount) + words * 8 * (checkpointOpen ? 3 : 1) + 8
        guard bytes.count == expectedSize else {
            throw FormatProblem("the state file is \(bytes.count) bytes; its header says \(expectedSize)")
        }
        let reason = String(decoding: try r.take(reasonLength), as: UTF8.self)
        let tags = Array(try r.take(Int(blockCount)))
        // With a checkpoint open, tags stop at the closed epoch; otherwise at the current one.
        // Relative first, like the guard above: `lastClosed + 1` overflows for UInt64.max (Tools/fuzz).
        let maximumTag = UInt8(lastClosed - baseSequence + (checkpointOpen ? 0 : 1))
        guard !tags.contains(where: { $0 > maximumTag }) else {
            throw FormatProblem("the state file has block tags newer than its last epoch")
        }
        guard let zero = BlockBitmap(count: Int(blockCount), words: try r.words(words)) else {
            throw FormatProblem("the state file's zero bitmap has bits past the end of the disk")
        }
        var active: BlockBitmap?, activeZero: BlockBitmap?
        var checkpoint: CheckpointInfo?
        if checkpointOpen {
            guard let a = BlockBitmap(count: Int(blockCount), words: try r.words(words)),
                  let az = BlockBitmap(count: Int(blockCount), words: try r.words(words)) else {
                throw FormatProblem("the state file's active bitmaps have bits past the end of the disk")
            }
            guard checkpointSequence == lastClosed, checkpointSequence > 0 else {
                throw FormatProblem("the state file's open checkpoint \(checkpointSequence) is not the last closed epoch \(lastClosed)")
            }
            var previous: ChangeID?
            if flags & flagHasPrevious != 0 {
                guard previousSequence < checkpointSequence, previousSequence >= baseSequence else {
                    throw FormatProblem("the state file's checkpoint predecessor \(previousSequence) is out of range")
                }
                previous = ChangeID(generation: generation, sequence: previousSequence)
            }
            active = a
            activeZero = az
            checkpoint = CheckpointInfo(changeID: ChangeID(generation: generation, sequence: checkpointSequence),
                                        previous: previous, createdAt: createdAt)
        } else if flags & flagHasPrevious != 0 {
            throw FormatProblem("the state file names a checkpoint predecessor without an open checkpoint")
        }
        var lastCommitted: ChangeID?
        if flags & flagHasLastCommitted != 0 {
            lastCommitted = ChangeID(generation: committedGeneration, sequence: committedSequence)
        }
        var identity: FileIdentity?
        if flags & flagHasIdentity != 0 {
            identity = FileIdentity(device: device, inode: inode, size: identitySize, modificationNanoseconds: mtime)
        }
        let map = DirtyMap(diskSize: diskSize, granularity: granularity, tags: tags, zero: zero, active: active,
                           activeZero: activeZero, baseSequence: baseSequence, lastClosed: lastClosed)
        return Contents(generation: generation, generationReason: reason, map: map, checkpoint: checkpoint,
                        lastCommitted: lastCommitted, identity: identity, logSequence: logSequence)
    }
}
