import BackupRepository
import Codecs
import Logging

/// A source whose disk can be read live, before the backup's point in time is fixed: the
/// backup then converges, as vMotion's pre-copy does for memory. It reads the live disk in
/// passes, each reading what was written during the one before, and takes the checkpoint only
/// for the last, small delta, so the VM's writes pay the overlay's copy-on-write for a moment
/// instead of for the whole backup.
///
/// Why the snapshot is still exactly the disk at the final checkpoint: a pass begins after a
/// mark (an epoch closed with every write drained), so any write that lands on a block after
/// the pass read it was marked after that mark, and the next pass (or the final one, read from
/// the checkpoint) reads the block again. A block no later pass reads was not written since
/// its last read.
public protocol ConvergingSource: ChangeSource {
    /// False when the point in time is fixed already (an adopted group checkpoint).
    var canConverge: Bool { get }
    /// The disk as it is now; writes go on while it is read.
    func liveReader() throws -> any DiskSource
    /// Closes an epoch without keeping a checkpoint (taken and at once released with abort,
    /// which keeps every mark) and returns its change ID.
    func mark(logger: Logger) throws -> String
    /// What changed since `base` (`base.snapshot.changeID`), as the tracker says now; the same
    /// answer `begin` would give.
    func changes(since base: BackupBase?, chunkSize: Int, fullRead: Bool, size: UInt64) throws -> ChangeSet
}

/// When to stop reading live and take the checkpoint.
public struct Convergence: Sendable, Equatable {
    /// Passes before the checkpoint, at most.
    public var maximumPasses: Int
    /// Take the checkpoint once what is left to read is this small...
    public var finalBytes: UInt64
    /// ...or would take this long at the last pass's speed.
    public var finalSeconds: Double

    public init(maximumPasses: Int = 4, finalBytes: UInt64 = 32 << 20, finalSeconds: Double = 0.5) {
        self.maximumPasses = maximumPasses
        self.finalBytes = finalBytes
        self.finalSeconds = finalSeconds
    }

    public static let `default` = Convergence()
}

/// One pass over the live disk, before the checkpoint.
public struct BackupPass: Codable, Sendable, Equatable {
    public var bytes: UInt64
    public var seconds: Double
}

/// What the passes before the checkpoint left: the map so far and the change ID it is
/// exact up to (the mark taken before its pass began).
struct Precopy {
    var base: BackupBase?
    var passes: [BackupPass] = []
    /// Why the passes stopped.
    var stop: String?
    /// The first pass read everything, and why.
    var fullReason: String?
    var firstPassFull = false

    /// A stand-in snapshot record for the map a pass built: only its change ID, size and
    /// chunk size are read (by the plan and the change source), and it is never stored.
    static func passRecord(disk: String, size: UInt64, chunkSize: Int, changeID: String) -> SnapshotRecord {
        SnapshotRecord(id: "pass", diskName: disk, diskSize: size, chunkSize: chunkSize, changeID: changeID,
                       source: .cbt, diskMap: DiskMapID(high: 0, low: 0))
    }
}
