import TrackerControl

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What a tracker knows about itself, for the control endpoint's status request.
public struct TrackerStatus: Sendable {
    public var generation: UUID
    /// Why this generation started (first attach, resize, corruption, ...).
    public var generationReason: String
    /// The last change ID closed by a checkpoint (`G/0` before the first checkpoint of the
    /// generation). `changes(since: currentChangeID)` is what changed after it.
    public var currentChangeID: ChangeID
    /// The epoch new marks go to (`currentChangeID.sequence + 1`); with a checkpoint open,
    /// marks are held apart and join this epoch on release.
    public var epoch: UInt64
    public var diskSize: UInt64
    public var granularity: UInt64
    public var openCheckpoint: CheckpointInfo?
    public var lastCommitted: ChangeID?
    /// Sequence numbers below this are "too old": the per-block epoch tags were rebased.
    public var baseSequence: UInt64
    /// The oldest change ID `changes(since:)` answers (`G/baseSequence`).
    public var oldestAnswerable: ChangeID
    /// True when the last shutdown was clean and the state was reused as is.
    public var cleanOpen: Bool
    /// What happened at open: crash replay, new generation and why, ...
    public var openReport: [String]
    /// Bytes of memory the dirty map and its bookkeeping use.
    public var memoryFootprint: Int
}
