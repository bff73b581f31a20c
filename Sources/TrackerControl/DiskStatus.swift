import Foundation

/// What STATUS reports for one disk (the control endpoint's JSON and `tessera filter status`).
public struct DiskStatus: Codable, Sendable, Equatable {
    public var name: String
    public var path: String
    public var files: [String]
    public var size: UInt64
    public var granularity: UInt64
    public var generation: String
    public var changeID: String
    public var lastCommitted: String?
    public var checkpoint: CheckpointStatus?
    public var overlayBytes: UInt64
    public var overlayBlocks: Int
    public var merging: Bool
    public var notes: [String]

    public init(name: String, path: String, files: [String], size: UInt64, granularity: UInt64, generation: String,
                changeID: String, lastCommitted: String?, checkpoint: CheckpointStatus?, overlayBytes: UInt64,
                overlayBlocks: Int, merging: Bool, notes: [String]) {
        self.name = name
        self.path = path
        self.files = files
        self.size = size
        self.granularity = granularity
        self.generation = generation
        self.changeID = changeID
        self.lastCommitted = lastCommitted
        self.checkpoint = checkpoint
        self.overlayBytes = overlayBytes
        self.overlayBlocks = overlayBlocks
        self.merging = merging
        self.notes = notes
    }
}

public struct CheckpointStatus: Codable, Sendable, Equatable {
    public var changeID: String
    public var previous: String?
    public var createdAt: Double
    public var ageSeconds: Double
    public var owner: CheckpointOwner?
    /// The consistency group the checkpoint was taken in, with the other disks of a VM.
    public var group: String?
    /// Connections reading `NAME@checkpoint` now.
    public var readers: Int?
    /// Why no one can be using this checkpoint any more (its owner is gone, its lease ran
    /// out and no reader is connected); nil while it may be in use. A backup releases a
    /// stale checkpoint with abort (nothing is lost) and takes its own.
    public var stale: String?

    public init(changeID: String, previous: String?, createdAt: Double, ageSeconds: Double, owner: CheckpointOwner?,
                group: String? = nil, readers: Int?, stale: String?) {
        self.changeID = changeID
        self.group = group
        self.previous = previous
        self.createdAt = createdAt
        self.ageSeconds = ageSeconds
        self.owner = owner
        self.readers = readers
        self.stale = stale
    }
}
