import BackupRepository
import BlockIO
import Logging

/// Where a backup learns what changed and reads the disk: Tessera's filter, an NBD server's
/// dirty bitmap (QEMU / libvirt pull mode), or a scan. The backup job does not know which:
/// it asks a source for a session, reads what the session says, and commits or aborts it.
public protocol ChangeSource: Sendable {
    /// Fixes the point in time to back up (a checkpoint, a connection, the file as it is) and
    /// says what changed since `base`.
    /// - Parameters:
    ///   - base: the snapshot the backup would build on (the newest usable one of the disk).
    ///   - fullRead: read everything even if an incremental is possible.
    func begin(base: BackupBase?, chunkSize: Int, fullRead: Bool, logger: Logger) throws -> any ChangeSession
}

/// One backup's view of a source, from `begin` to `commit` or `abort`.
public protocol ChangeSession: Sendable {
    /// The disk as it was at the session's point in time.
    var reader: any DiskSource { get }
    var kind: ChangeSourceKind { get }
    /// The change ID the snapshot is taken at (the filter's checkpoint), recorded in the
    /// snapshot so the next incremental can ask what changed since it.
    var changeID: String? { get }
    /// The consistency group the point in time was taken in, with other disks.
    var group: String? { get }
    var changes: ChangeSet { get }
    /// The snapshot is committed: the source may move on (the filter releases the checkpoint
    /// with commit).
    func commit() throws
    /// The backup failed or was cancelled. Nothing may be lost: the next backup must still
    /// see every change (the filter releases the checkpoint with abort).
    func abort()
    /// Bytes the checkpoint's overlay holds now (what the VM's writes copied while it was
    /// open); nil for a source without one.
    func overlayBytes() -> UInt64?
}

extension ChangeSession {
    public func overlayBytes() -> UInt64? { nil }
}

/// The snapshot a backup builds on.
public struct BackupBase: Sendable {
    public var snapshot: SnapshotRecord
    public var map: DiskMap

    public init(snapshot: SnapshotRecord, map: DiskMap) {
        self.snapshot = snapshot
        self.map = map
    }

    /// Why an incremental on top of this base is impossible for a disk of `size` in a
    /// repository of `chunkSize`, or nil when it is possible.
    func mismatch(size: UInt64, chunkSize: Int) -> String? {
        if snapshot.diskSize != size {
            return "the disk size changed from \(snapshot.diskSize) to \(size) bytes since snapshot \(snapshot.id)"
        }
        if snapshot.chunkSize != chunkSize {
            return "snapshot \(snapshot.id) uses \(snapshot.chunkSize)-byte chunks, the repository now \(chunkSize)"
        }
        return nil
    }
}

/// What a session says to read.
public enum ChangeSet: Sendable, Equatable {
    /// Every allocated range (holes are skipped), with the reason when an incremental was
    /// wanted but is not possible (nil for a scan, which reads everything by design).
    case everything(reason: String?)
    /// Only `data`, relative to the base; `zeroed` ranges were trimmed or zeroed and read as
    /// zeroes, so their whole chunks need no read.
    case since(data: [ByteRange], zeroed: [ByteRange])
}

/// Where a backup learns what changed, in order of preference.
public enum ChangeSourceKind: String, Sendable, Codable {
    /// The filter's control endpoint (our own tracker).
    case cbt
    /// An NBD export with a `qemu:dirty-bitmap:` context (QEMU / libvirt pull mode).
    case nbdBitmap = "nbd-bitmap"
    /// No tracking: read every allocated range, store only chunks the repository lacks.
    case scan
    /// Everything read because an incremental was not possible or not wanted.
    case full
}

// MARK: - A scan

/// No tracking: every allocated range of a raw file or VMDK is read; dedup against the
/// repository keeps what is stored small.
public struct ScanChangeSource: ChangeSource {
    public let path: String

    public init(path: String) { self.path = path }

    public func begin(base: BackupBase?, chunkSize: Int, fullRead: Bool, logger: Logger) throws -> any ChangeSession {
        FixedSession(reader: try ImageSource(path: path), kind: fullRead ? .full : .scan,
                     changes: .everything(reason: fullRead ? "a full read was asked for" : nil))
    }
}

/// A session with nothing to commit or abort (a scan, an NBD bitmap).
struct FixedSession: ChangeSession {
    let reader: any DiskSource
    let kind: ChangeSourceKind
    var changeID: String? { nil }
    var group: String? { nil }
    let changes: ChangeSet

    func commit() throws {}
    func abort() {}
}

// MARK: - An NBD server's dirty bitmap

/// An NBD export with a `qemu:dirty-bitmap:NAME` context (`qemu-nbd -B NAME`, QEMU's NBD
/// server in a libvirt pull-mode backup). The bitmap carries no identity, so it is used only
/// on top of a base taken the same way (or by a full read) of the same size and chunk size;
/// keeping the bitmap in step with that base is the operator's (or libvirt's) job.
public struct NBDBitmapChangeSource: ChangeSource {
    public let uri: String
    /// The bitmap's name or its whole context name; nil reads everything.
    public let bitmap: String?

    public init(uri: String, bitmap: String?) {
        self.uri = uri
        self.bitmap = bitmap
    }

    var context: String? { bitmap.map { $0.hasPrefix("qemu:dirty-bitmap:") ? $0 : "qemu:dirty-bitmap:\($0)" } }

    public func begin(base: BackupBase?, chunkSize: Int, fullRead: Bool, logger: Logger) throws -> any ChangeSession {
        let nbd = try NBDSource(uri: uri, contexts: context.map { [$0] } ?? [])
        if fullRead { return FixedSession(reader: nbd, kind: .full, changes: .everything(reason: "a full read was asked for")) }
        guard let context else {
            return FixedSession(reader: nbd, kind: .full, changes: .everything(reason: "no dirty bitmap was named for the NBD source"))
        }
        guard nbd.negotiatedContexts.contains(context) else {
            // A quiet full read here would hide a broken pull-mode setup night after night.
            throw AgentError(.noBitmap, "the NBD server at \(uri) does not offer \(context) (it agreed to: \(nbd.negotiatedContexts.isEmpty ? "nothing" : nbd.negotiatedContexts.joined(separator: ", "))); `nbdinfo '\(uri)'` lists the contexts it offers. Name a bitmap it has, or read the whole disk")
        }
        var reason: String?
        if let base {
            reason = base.mismatch(size: nbd.size, chunkSize: chunkSize)
            if reason == nil && base.snapshot.source != .nbdBitmap && base.snapshot.source != .full {
                reason = "snapshot \(base.snapshot.id) was not taken from an NBD dirty bitmap"
            }
        } else {
            reason = "no earlier snapshot of this disk in the repository"
        }
        if let reason { return FixedSession(reader: nbd, kind: .full, changes: .everything(reason: reason)) }
        let dirty = try nbd.status(context: context, in: ByteRange(offset: 0, length: nbd.size))
            .filter { $0.1 & 1 == 1 }.map(\.0).coalesced()
        return FixedSession(reader: nbd, kind: .nbdBitmap, changes: .since(data: dirty, zeroed: []))
    }
}
