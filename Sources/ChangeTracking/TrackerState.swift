import BlockIO
import TrackerControl
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Everything `ChangeTracker` guards with its main mutex.
struct TrackerState: Sendable {
    var generation: UUID
    var generationReason: String
    var map: DirtyMap
    var checkpoint: CheckpointInfo?
    var lastCommitted: ChangeID?
    /// The disk file's identity as last persisted (open identity, replaced at close).
    var identity: FileIdentity?
    var closed = false
    var cleanOpen: Bool
    var openReport: [String]

    // Activity log bookkeeping. Invariant: an extent in `hot` is covered by a durable log
    // record with a sequence above `encodedLogSequence`, so a crash replays it whatever
    // state file is on disk.
    var hot: [UInt64: UInt64] = [:]
    /// Extents waiting for the next log batch (group commit).
    var pending: Set<UInt64> = []
    /// The batch number the next drain of `pending` gets.
    var nextBatch: UInt64 = 1
    var lastAssignedLogSequence: UInt64
    /// The state file on disk contains every record up to this sequence.
    var persistedLogSequence: UInt64
    /// The highest log sequence any encoded state (durable or still being written) contains.
    var encodedLogSequence: UInt64

    /// Starts a fresh generation over the same (or a new) disk size.
    mutating func startGeneration(diskSize: UInt64, reason: String) {
        generation = UUID()
        generationReason = reason
        map = DirtyMap(diskSize: diskSize, granularity: map.granularity)
        checkpoint = nil
        lastCommitted = nil
        // Hot extents were logged for the old map; new marks must log again.
        hot = [:]
    }

    var memoryFootprint: Int {
        // A dictionary entry costs about two words plus overhead; count 32 bytes per entry.
        map.memoryFootprint + hot.capacity * 32 + pending.capacity * 16
    }
}
