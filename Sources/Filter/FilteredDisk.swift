import BlockIO
import ChangeTracking
import Foundation
import Synchronization
import TrackerControl

/// One disk attached to the filter: its flat file(s), its change tracker and, while a
/// checkpoint is open, its overlay.
///
/// The write path's one rule: the tracker marks a change *before* the write is issued
/// (so before it is acknowledged). A mark for a write that then fails is harmless; a write
/// without a mark would be a lost change. Requests on the same blocks are ordered (see
/// `BlockRangeLock`), so the tracker's per-block tags always describe the request that
/// reached the disk last.
///
/// Locks, outermost first: `releaseGate` (a whole release; a checkpoint waits for it) →
/// `io` (shared for requests, exclusive to switch epochs and for each merge batch) →
/// `blockLocks` (one request's blocks, from its mark to the end of its I/O) → the tracker's
/// and the overlay's own locks.
public final class FilteredDisk: Sendable {
    public let name: String
    public let path: String
    public let image: DiskImage
    public let tracker: ChangeTracker
    public let stateDirectory: String
    /// Tracking granularity = the overlay's copy-on-write unit: one unit per dirty block.
    let granularity: UInt64
    let io = ReadWriteLock()
    let blockLocks = BlockRangeLock()
    /// Held by a release for its whole merge; a checkpoint waits for it, a second release
    /// is refused, and `close` waits for a stopped merge to give it back.
    let releaseGate = NSLock()
    let releaseRunning = Atomic<Bool>(false)
    /// Set by `close`: a running merge stops after its current batch (it resumes on restart).
    let closing = Atomic<Bool>(false)
    let overlayBox: Mutex<Overlay?>
    /// The change ID of the open checkpoint while its frozen base may be read; nil from the
    /// moment a release starts. A `NAME@checkpoint` connection reads only while it matches
    /// the checkpoint the connection opened, so it never returns another point in time.
    let readableCheckpoint: Mutex<String?>
    /// Connections open on `NAME@checkpoint` (a checkpoint with readers is never stale).
    let checkpointReaders = Atomic<Int>(0)
    /// Who opened the open checkpoint; kept in `checkpoint-owner.json` so it survives restarts.
    let owner = Mutex<CheckpointOwner?>(nil)
    var ownerPath: String { "\(stateDirectory)/checkpoint-owner.json" }
    /// The consistency group the open checkpoint was taken in (with other disks of a VM).
    let checkpointGroup = Mutex<String?>(nil)
    var groupPath: String { "\(stateDirectory)/checkpoint-group" }
    /// flock on the disk's state directory and on every file of the disk, held while attached:
    /// a second filter (or a second attachment here) is refused before it touches anything,
    /// and `restore` can see that a filter serves a file.
    let fileLocks: Mutex<[FileLock]>
    /// Test hooks (nil in production).
    package let hooks = Mutex<Hooks>(Hooks())
    /// Things the operator should know about how the disk was attached (recovered overlay,
    /// new generation and why...). Shown by STATUS.
    public let attachNotes: [String]

    package struct Hooks: Sendable {
        /// Runs between a request's mark and its I/O, the window in which another request on
        /// the same blocks must not get in.
        package var afterMark: (@Sendable (_ zero: Bool, _ range: ByteRange) -> Void)?
        /// Runs before each batch of a merge (with no lock held).
        package var beforeMergeBatch: (@Sendable () -> Void)?
        /// Runs after a request made a file durable: the base (true) or the overlay (false).
        package var synced: (@Sendable (_ base: Bool) -> Void)?
        package init() {}
    }

    public var size: UInt64 { image.size }

    private init(name: String, path: String, image: DiskImage, tracker: ChangeTracker, stateDirectory: String,
                 overlay: Overlay?, fileLocks: [FileLock], notes: [String]) {
        self.name = name
        self.path = path
        self.image = image
        self.tracker = tracker
        self.stateDirectory = stateDirectory
        self.granularity = tracker.status().granularity
        self.overlayBox = Mutex(overlay)
        self.fileLocks = Mutex(fileLocks)
        self.attachNotes = notes
        let open = overlay == nil ? nil : tracker.status().openCheckpoint
        self.readableCheckpoint = Mutex(open.map { $0.changeID.description })
        if overlay != nil, let bytes = try? DurableFile.read(ownerPath),
           let saved = try? JSONDecoder().decode(CheckpointOwner.self, from: Data(bytes)) {
            owner.withLock { $0 = saved }
        }
        if overlay != nil, let bytes = try? DurableFile.read(groupPath) {
            checkpointGroup.withLock { $0 = String(decoding: bytes, as: UTF8.self) }
        }
    }

    /// The identity the tracker compares across restarts: a write that bypassed the filter
    /// changes the mtime (or size, or inode) of some extent file.
    static func combinedIdentity(_ image: DiskImage) throws -> FileIdentity {
        let ids = try image.identity()
        guard var combined = ids.first else { throw FilterError(.io, "\(image.path): the disk has no extent files") }
        combined.size = image.size
        combined.modificationNanoseconds = ids.map(\.modificationNanoseconds).max() ?? 0
        // Fold every extent's inode in, so replacing any extent file is noticed.
        combined.inode = ids.dropFirst().reduce(combined.inode) { $0 &* 31 &+ $1.inode }
        return combined
    }

    /// The name of the lock file in a disk's state directory.
    static let lockFileName = "lock"

    /// Attaches a disk: takes its locks, opens its image, its tracker (creating or loading
    /// the state in `stateDirectory`) and recovers any overlay left by an earlier run,
    /// finishing a merge that a crash cut short.
    /// - Throws: `FilterError.busy` naming the process when another process (or another
    ///   attachment in this one) holds the state directory or a file of the disk.
    public static func attach(name: String, path: String, stateDirectory: String,
                              configuration: TrackerConfiguration) throws -> FilteredDisk {
        try DurableFile.makeDirectory(stateDirectory)
        // Before anything in the state directory or the disk is read or changed: one process
        // serves them. A second filter here would replay the log, merge the overlay a second
        // time over newer writes, and replace the log the first one writes to.
        var locks: [FileLock] = []
        do {
            locks.append(try FileLock.acquire("\(stateDirectory)/\(lockFileName)", create: true, writePid: true))
        } catch let held as FileLock.Held {
            throw FilterError(.busy, "the state directory \(stateDirectory) of disk \(name) is in use by \(held.pid.map { "process \($0)" } ?? "another process") (another `tessera filter serve`?); stop it, or give this filter its own --state-dir")
        }
        let image = try DiskImage.open(path: path, writable: true)
        for file in Set([image.path] + image.extents.map(\.path)).sorted() {
            do {
                locks.append(try FileLock.acquire(file))
            } catch let held as FileLock.Held {
                throw DiskFileHeld(path: file, pid: held.pid)
            }
        }
        let tracker = try ChangeTracker.open(stateDirectory: stateDirectory, diskSize: image.size,
                                             identity: try combinedIdentity(image), configuration: configuration)
        var notes = tracker.status().openReport
        let granularity = tracker.status().granularity
        var overlay: Overlay?
        var resetAfterMerge = false
        if Overlay.exists(in: stateDirectory) {
            let recovered = try Overlay.recover(in: stateDirectory, granularity: granularity, diskSize: image.size)
            overlay = recovered
            if recovered.isMerging {
                notes.append("resumed a release (\(recovered.releaseCommit ? "commit" : "abort")) that was interrupted")
            } else if tracker.status().openCheckpoint == nil {
                // The tracker never recorded the checkpoint (a crash while it opened), or
                // recorded its release: fold any writes back and carry on.
                if recovered.blockCount > 0 {
                    resetAfterMerge = true
                    notes.append("an overlay without a checkpoint was merged back; tracking was reset to be safe")
                }
                try recovered.beginMerge(commit: false)
            } else {
                notes.append("a checkpoint left open by an earlier run is still open: release it (commit or abort)")
            }
        } else if tracker.status().openCheckpoint != nil {
            // A crash between the tracker's checkpoint and the overlay's creation: no write
            // went anywhere yet, so an empty overlay is exactly right.
            overlay = try Overlay.create(in: stateDirectory, granularity: granularity, diskSize: image.size)
            notes.append("a checkpoint left open by an earlier run is still open: release it (commit or abort)")
        }
        let disk = FilteredDisk(name: name, path: path, image: image, tracker: tracker,
                                stateDirectory: stateDirectory, overlay: overlay, fileLocks: locks, notes: notes)
        if let overlay, overlay.isMerging {
            let hadCheckpoint = tracker.status().openCheckpoint != nil
            try disk.finishMerge(overlay, commit: overlay.releaseCommit, releaseTracker: hadCheckpoint)
            if resetAfterMerge {
                try tracker.reset(reason: "an overlay was found without an open checkpoint")
            }
        }
        return disk
    }

    /// A file of the disk is held by another process, or by another disk of this filter.
    public struct DiskFileHeld: Error, CustomStringConvertible {
        public var path: String
        public var pid: Int32?
        public var description: String {
            if pid == getpid() {
                return "\(path) is already attached to this filter under another name; one file can be attached once (writes through one name would not be tracked for the other)"
            }
            return "\(path) is served by \(pid.map { "process \($0)" } ?? "another process") (a filter holds it); stop that filter or detach the disk there first"
        }
    }

    /// Whether `path` names one of this disk's files (the same inode, whatever the spelling).
    func holdsFile(_ path: String) -> Bool {
        guard let other = try? BlockFile(path: path, mode: .readOnly).identity() else { return false }
        return fileLocks.withLock { $0 }.contains { lock in
            guard let mine = try? BlockFile(path: lock.path, mode: .readOnly).identity() else { return false }
            return mine.device == other.device && mine.inode == other.inode
        }
    }

    // MARK: - Block status

    /// Every changed extent of a view inside `range`, following the tracker's pages (a
    /// page may answer for less than asked; stopping early would report changes as clean).
    public func changedExtents(view: ChangeView, in range: ByteRange) throws -> [ChangedExtent] {
        var out: [ChangedExtent] = []
        var at = range.offset
        while at < range.end {
            let page = try tracker.changes(view: view, in: ByteRange(offset: at, length: range.end - at))
            out += page.extents
            guard page.processed.end > at else {
                throw FilterError(.io, "the tracker answered a query at offset \(at) of disk \(name) with an empty page")
            }
            at = page.processed.end
        }
        return out
    }

    /// `base:allocation` for the live disk or the checkpoint view, as (range, NBD flags):
    /// 0 = data, 3 = hole + reads as zero.
    public func allocation(in range: ByteRange, checkpointView: Bool) throws -> [(ByteRange, UInt32)] {
        try checkRange(range.offset, range.length)
        let base = try image.dataRanges(in: range)
        var out: [(ByteRange, UInt32)] = []
        var at = range.offset
        for data in base {
            if data.offset > at { out.append((ByteRange(offset: at, length: data.offset - at), 3)) }
            out.append((data, 0))
            at = data.end
        }
        if at < range.end { out.append((ByteRange(offset: at, length: range.end - at), 3)) }
        guard !checkpointView, let overlay else { return out }
        // Overlay blocks override the base: refine per block.
        var refined: [(ByteRange, UInt32)] = []
        for (r, flags) in out {
            var p = r.offset
            while p < r.end {
                let block = p / granularity
                let end = min(r.end, (block + 1) * granularity)
                var f = flags
                if let e = overlay.entry(forBlock: block) { f = e.kind == .zero ? 3 : 0 }
                if let last = refined.last, last.1 == f, last.0.end == p {
                    refined[refined.count - 1].0.length += end - p
                } else {
                    refined.append((ByteRange(offset: p, length: end - p), f))
                }
                p = end
            }
        }
        return refined
    }

    // MARK: - Status and shutdown

    public func status() -> DiskStatus {
        let t = tracker.status()
        let ov = overlay
        let files = image.extents.map(\.path)
        var checkpoint: CheckpointStatus?
        if let c = t.openCheckpoint {
            let holder = owner.withLock { $0 }
            let readers = checkpointReaders.load(ordering: .relaxed)
            checkpoint = CheckpointStatus(changeID: c.changeID.description, previous: c.previous?.description,
                                          createdAt: Double(c.createdAt),
                                          ageSeconds: Date().timeIntervalSince1970 - Double(c.createdAt),
                                          owner: holder, group: checkpointGroup.withLock { $0 }, readers: readers,
                                          stale: ov?.isMerging == true ? nil : holder?.staleReason(readers: readers))
        }
        return DiskStatus(name: name, path: path, files: files, size: size, granularity: t.granularity,
                          generation: t.generation.uuidString, changeID: t.currentChangeID.description,
                          lastCommitted: t.lastCommitted?.description, checkpoint: checkpoint,
                          overlayBytes: ov?.storedBytes ?? 0, overlayBlocks: ov?.blockCount ?? 0,
                          merging: ov?.isMerging ?? false, notes: attachNotes)
    }

    /// Persists the tracking state (called periodically and at shutdown).
    public func persist() throws { try tracker.persist() }

    /// Clean shutdown: data durable, overlay flushed (an open checkpoint stays open across
    /// restarts), tracking state written with the clean flag. A running merge is stopped
    /// first (it resumes at the next start), so no merge write lands after the disk's
    /// identity is recorded: that would look like a write behind the filter's back.
    public func close() throws {
        closing.store(true, ordering: .releasing)
        releaseGate.lock()
        defer { releaseGate.unlock() }
        try io.withExclusive {
            try overlay?.flush()
            try image.sync()
            try tracker.close(identity: try FilteredDisk.combinedIdentity(image))
        }
        // Closed: another filter (or an attach) may take the state and the files now.
        fileLocks.withLock { $0.removeAll() }
    }
}
