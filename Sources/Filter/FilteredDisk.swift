import BlockIO
import ChangeTracking
import Foundation
import Synchronization

/// One disk attached to the filter: its flat file(s), its change tracker and, while a
/// checkpoint is open, its overlay.
///
/// The write path's one rule: the tracker marks a change *before* the write is issued
/// (so before it is acknowledged). A mark for a write that then fails is harmless; a write
/// without a mark would be a lost change.
public final class FilteredDisk: Sendable {
    public let name: String
    public let path: String
    public let image: DiskImage
    public let tracker: ChangeTracker
    public let stateDirectory: String
    /// Overlay block size = tracking granularity: one copy-on-write unit per dirty block.
    let blockSize: UInt64
    /// Shared for I/O; exclusive to switch epochs (checkpoint) and for each merge batch.
    let io = ReadWriteLock()
    private let overlayBox: Mutex<Overlay?>
    private let releaseInProgress = Mutex(false)
    /// Who opened the open checkpoint; kept in `checkpoint-owner.json` so it survives restarts.
    private let owner = Mutex<CheckpointOwner?>(nil)
    private var ownerPath: String { "\(stateDirectory)/checkpoint-owner.json" }
    /// Things the operator should know about how the disk was attached (recovered overlay,
    /// new generation and why...). Shown by STATUS.
    public let attachNotes: [String]

    public var size: UInt64 { image.size }

    private init(name: String, path: String, image: DiskImage, tracker: ChangeTracker, stateDirectory: String,
                 overlay: Overlay?, notes: [String]) {
        self.name = name
        self.path = path
        self.image = image
        self.tracker = tracker
        self.stateDirectory = stateDirectory
        self.blockSize = tracker.status().granularity
        self.overlayBox = Mutex(overlay)
        self.attachNotes = notes
        if overlay != nil, let bytes = try? DurableFile.read(ownerPath),
           let saved = try? JSONDecoder().decode(CheckpointOwner.self, from: Data(bytes)) {
            owner.withLock { $0 = saved }
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

    /// Attaches a disk: opens its image, its tracker (creating or loading the state in
    /// `stateDirectory`) and recovers any overlay left by an earlier run, finishing a merge
    /// that a crash cut short.
    public static func attach(name: String, path: String, stateDirectory: String,
                              configuration: TrackerConfiguration) throws -> FilteredDisk {
        try DurableFile.makeDirectory(stateDirectory)
        let image = try DiskImage.open(path: path, writable: true)
        let tracker = try ChangeTracker.open(stateDirectory: stateDirectory, diskSize: image.size,
                                             identity: try combinedIdentity(image), configuration: configuration)
        var notes = tracker.status().openReport
        let granularity = tracker.status().granularity
        var overlay: Overlay?
        var resetAfterMerge = false
        if Overlay.exists(in: stateDirectory) {
            let recovered = try Overlay.recover(in: stateDirectory, blockSize: granularity, diskSize: image.size)
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
            overlay = try Overlay.create(in: stateDirectory, blockSize: granularity, diskSize: image.size)
            notes.append("a checkpoint left open by an earlier run is still open: release it (commit or abort)")
        }
        let disk = FilteredDisk(name: name, path: path, image: image, tracker: tracker,
                                stateDirectory: stateDirectory, overlay: overlay, notes: notes)
        if let overlay, overlay.isMerging {
            let hadCheckpoint = tracker.status().openCheckpoint != nil
            try disk.finishMerge(overlay, commit: overlay.releaseCommit, releaseTracker: hadCheckpoint)
            if resetAfterMerge {
                try tracker.reset(reason: "an overlay was found without an open checkpoint")
            }
        }
        return disk
    }

    // MARK: - The write path

    private var overlay: Overlay? { overlayBox.withLock { $0 } }

    public var hasCheckpoint: Bool { overlay != nil }

    func checkRange(_ offset: UInt64, _ count: UInt64) throws {
        guard offset <= size, count <= size - offset else {
            throw FilterError(.invalidArgument, "byte range [\(offset), \(offset &+ count)) is past the end of disk \(name) (\(size) bytes)")
        }
    }

    /// Reads the live disk: the overlay where it holds a block, the base elsewhere.
    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, UInt64(buffer.count))
        try io.withShared {
            guard let overlay else { return try image.read(into: buffer, at: offset) }
            try forEachBlockPiece(offset: offset, count: buffer.count) { block, within, at, pieceRange in
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[pieceRange])
                if try !overlay.read(block: block, within: within, into: piece) {
                    try image.read(into: piece, at: at)
                }
            }
        }
    }

    /// `read` if it needs no disk I/O and no waiting for a lock (the NBD server calls it on its
    /// event loop); false otherwise, and the caller then uses `read`.
    public func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard offset <= size, UInt64(buffer.count) <= size - offset else { return false }
        // Shared like `read`, so a checkpoint or a merge batch never sees this read half done.
        let served = io.withSharedIfAvailable { () -> Bool in
            guard let overlay else { return image.readIfCached(into: buffer, at: offset) }
            var served = true
            forEachBlockPiece(offset: offset, count: buffer.count) { block, within, at, pieceRange in
                guard served else { return }
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[pieceRange])
                switch overlay.readIfCached(block: block, within: within, into: piece) {
                case .served: break
                case .notInOverlay: served = image.readIfCached(into: piece, at: at)
                case .wouldBlock: served = false
                }
            }
            return served
        }
        return served ?? false
    }

    /// `readCheckpoint` if every byte is in the page cache; false otherwise.
    public func readCheckpointIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard overlay != nil else { return false }
        return image.readIfCached(into: buffer, at: offset)
    }

    /// Reads the base file: the disk exactly as it was at the open checkpoint.
    public func readCheckpoint(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, UInt64(buffer.count))
        guard overlay != nil else {
            throw FilterError(.noCheckpoint, "disk \(name) has no open checkpoint; its checkpoint export is gone")
        }
        try image.read(into: buffer, at: offset)
    }

    public func write(offset: UInt64, bytes: UnsafeRawBufferPointer, fua: Bool) throws {
        try checkRange(offset, UInt64(bytes.count))
        guard bytes.count > 0 else { return }
        try io.withShared {
            try tracker.markWrite(ByteRange(offset: offset, length: UInt64(bytes.count)))
            if let overlay {
                try forEachBlockPiece(offset: offset, count: bytes.count) { _, _, at, pieceRange in
                    let piece = UnsafeRawBufferPointer(rebasing: bytes[pieceRange])
                    if try !overlay.write(piece, at: at, base: { try readBaseBlock(at: $0, into: $1) }) {
                        try image.write(piece, at: at)
                    }
                }
                if fua { try overlay.flush(); try image.sync() }
            } else {
                try image.write(bytes, at: offset)
                if fua { try image.sync() }
            }
        }
    }

    /// TRIM and WRITE_ZEROES: both leave the range reading as zeroes here (`noHole` asks
    /// for allocated zeroes instead of a hole).
    public func zero(_ range: ByteRange, noHole: Bool, fua: Bool) throws {
        try checkRange(range.offset, range.length)
        guard range.length > 0 else { return }
        try io.withShared {
            try tracker.markZero(range)
            if let overlay {
                var at = range.offset
                while at < range.end {
                    let block = at / blockSize
                    let blockStart = block * blockSize
                    let blockEnd = min(blockStart + blockSize, size)
                    let pieceEnd = min(blockEnd, range.end)
                    if at == blockStart && pieceEnd == blockEnd {
                        if try !overlay.zeroBlock(block) { try zeroBase(ByteRange(offset: at, length: pieceEnd - at), noHole: noHole) }
                    } else {
                        let zeroes = [UInt8](repeating: 0, count: Int(pieceEnd - at))
                        let written = try zeroes.withUnsafeBytes { z in
                            try overlay.write(z, at: at, base: { try readBaseBlock(at: $0, into: $1) })
                        }
                        if !written { try zeroBase(ByteRange(offset: at, length: pieceEnd - at), noHole: noHole) }
                    }
                    at = pieceEnd
                }
                if fua { try overlay.flush() }
            } else {
                try zeroBase(range, noHole: noHole)
                if fua { try image.sync() }
            }
        }
    }

    private func zeroBase(_ range: ByteRange, noHole: Bool) throws {
        if noHole { try image.writeZeroes(range) } else { try image.punchHole(range) }
    }

    /// FLUSH: the data (base and overlay) is durable. The tracking state needs nothing here:
    /// the activity log made every mark durable before its write was issued.
    public func flush() throws {
        try io.withShared {
            try overlay?.flush()
            try image.sync()
        }
    }

    private func readBaseBlock(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        // The last block may be partial: past the end of the disk reads as zeroes.
        let count = Int(min(UInt64(buffer.count), size - offset))
        if count < buffer.count {
            UnsafeMutableRawBufferPointer(rebasing: buffer[count...]).initializeMemory(as: UInt8.self, repeating: 0)
        }
        try image.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]), at: offset)
    }

    /// Calls `body(block, offsetWithinBlock, diskOffset, rangeInBuffer)` for each piece of
    /// `[offset, offset + count)` that lies inside one block.
    private func forEachBlockPiece(offset: UInt64, count: Int, _ body: (UInt64, Int, UInt64, Range<Int>) throws -> Void) rethrows {
        var done = 0
        while done < count {
            let at = offset + UInt64(done)
            let block = at / blockSize
            let within = Int(at - block * blockSize)
            let n = min(count - done, Int(blockSize) - within)
            try body(block, within, at, done..<(done + n))
            done += n
        }
    }

    // MARK: - Checkpoints

    /// Closes the current epoch and redirects writes into a new overlay, atomically with
    /// respect to every write (the exclusive lock drains in-flight I/O first).
    public func checkpoint(owner newOwner: CheckpointOwner? = nil) throws -> CheckpointInfo {
        try io.withExclusive {
            if overlay != nil {
                throw FilterError(.checkpointOpen, "disk \(name) already has an open checkpoint; release it first (tessera filter release --disk \(name) [--abort])")
            }
            // The base becomes the point in time: make it durable as it stands.
            try image.sync()
            let created = try Overlay.create(in: stateDirectory, blockSize: blockSize, diskSize: size)
            do {
                let info = try tracker.checkpoint()
                overlayBox.withLock { $0 = created }
                owner.withLock { $0 = newOwner }
                if let newOwner, let data = try? JSONEncoder().encode(newOwner) {
                    try? DurableFile.write(Array(data), to: ownerPath)
                }
                return info
            } catch {
                try? created.destroy()
                throw error
            }
        }
    }

    /// Merges the overlay back into the base while the disk stays in use, then closes the
    /// checkpoint in the tracker (commit: the backup succeeded; abort: it did not — either
    /// way no change is lost).
    public func release(commit: Bool) throws {
        let mine = releaseInProgress.withLock { busy -> Bool in
            if busy { return false }
            busy = true
            return true
        }
        guard mine else { throw FilterError(.busy, "a release of disk \(name) is already running") }
        defer { releaseInProgress.withLock { $0 = false } }
        guard let overlay else {
            throw FilterError(.noCheckpoint, "disk \(name) has no open checkpoint to release")
        }
        try overlay.beginMerge(commit: commit)
        try finishMerge(overlay, commit: commit, releaseTracker: true)
    }

    /// Copies the overlay back in batches; each batch holds the I/O lock exclusive only for
    /// itself, so clients keep working between batches.
    private func finishMerge(_ overlay: Overlay, commit: Bool, releaseTracker: Bool) throws {
        while true {
            let left = try io.withExclusive {
                try overlay.mergeBatch(limit: 64,
                                       writeBase: { try image.write($1, at: $0) },
                                       zeroBase: { try image.punchHole($0) },
                                       syncBase: { try image.sync() })
            }
            if left == 0 { break }
        }
        try io.withExclusive {
            try image.sync()
            if releaseTracker { try tracker.release(commit: commit) }
            try overlay.destroy()
            overlayBox.withLock { $0 = nil }
            owner.withLock { $0 = nil }
            unlink(ownerPath)
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
                let block = p / blockSize
                let end = min(r.end, (block + 1) * blockSize)
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
            checkpoint = CheckpointStatus(changeID: c.changeID.description, previous: c.previous?.description,
                                          createdAt: Double(c.createdAt),
                                          ageSeconds: Date().timeIntervalSince1970 - Double(c.createdAt),
                                          owner: owner.withLock { $0 })
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
    /// restarts), tracking state written with the clean flag.
    public func close() throws {
        try io.withExclusive {
            try overlay?.flush()
            try image.sync()
            try tracker.close(identity: try FilteredDisk.combinedIdentity(image))
        }
    }
}

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
}

public struct CheckpointStatus: Codable, Sendable, Equatable {
    public var changeID: String
    public var previous: String?
    public var createdAt: Double
    public var ageSeconds: Double
    public var owner: CheckpointOwner?
}

/// The process that opened a checkpoint.
public struct CheckpointOwner: Codable, Sendable, Equatable {
    public var host: String
    public var pid: Int32

    public init(host: String, pid: Int32) {
        self.host = host
        self.pid = pid
    }

    /// This process.
    public static var current: CheckpointOwner {
        CheckpointOwner(host: ProcessInfo.processInfo.hostName, pid: getpid())
    }

    /// True when the owner ran on this host and is gone: its checkpoint can never be
    /// released by it. (A live pid may have been reused; that errs on the safe side.)
    public var isDeadOnThisHost: Bool {
        guard host == ProcessInfo.processInfo.hostName else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }
}
