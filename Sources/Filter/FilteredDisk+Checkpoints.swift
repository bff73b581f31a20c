import BlockIO
import ChangeTracking
import Foundation
import Synchronization
import TrackerControl

/// Checkpoints: the epoch switch and the overlay that keeps the base still, and the release
/// that merges the overlay back.
extension FilteredDisk {
    // MARK: - Checkpoints

    /// Closes the current epoch and redirects writes into a new overlay, atomically with
    /// respect to every write (the exclusive lock drains in-flight I/O first). Waits for a
    /// release that is still merging. Either every step happens or none: a failure (a full
    /// state directory...) leaves the disk as it was, with no checkpoint.
    public func checkpoint(owner newOwner: CheckpointOwner? = nil) throws -> CheckpointInfo {
        try Self.checkpoint([self], owner: newOwner, group: nil)[0]
    }

    /// Checkpoints several disks at one instant (a consistency group: the disks of one VM).
    ///
    /// Every disk's release gate is taken first (waiting for running merges without holding
    /// up any I/O), then every disk's I/O lock exclusive, in name order: from the moment the
    /// last one is held until all are released no write reaches any of the disks, so no write
    /// to one disk can be ordered between the checkpoints of the others. A write that a guest
    /// issued only after another was acknowledged lands in the same or a later epoch. All or
    /// nothing: if one disk fails, the checkpoints already taken are undone.
    /// - Returns: the checkpoints in the order of `disks`.
    public static func checkpoint(_ disks: [FilteredDisk], owner: CheckpointOwner?, group: String?) throws -> [CheckpointInfo] {
        let ordered = disks.sorted { $0.name < $1.name }
        for d in ordered { d.releaseGate.lock() }
        defer { for d in ordered.reversed() { d.releaseGate.unlock() } }
        if let closing = ordered.first(where: { $0.closing.load(ordering: .acquiring) }) { throw closing.shuttingDown() }
        // A release cut short by a storage fault left its overlay merging: finish it first
        // (before the I/O locks: the merge takes each one per batch), or no checkpoint could
        // ever be taken again until a restart.
        for d in ordered { try d.finishInterruptedRelease() }
        return try holdExclusive(ordered[...]) {
            var taken: [(FilteredDisk, Overlay)] = []
            do {
                var infos: [String: CheckpointInfo] = [:]
                for d in ordered {
                    let (info, overlay) = try d.checkpointLocked(owner: owner, group: group)
                    taken.append((d, overlay))
                    infos[d.name] = info
                }
                return disks.map { infos[$0.name]! }
            } catch {
                for (d, overlay) in taken.reversed() { d.undoCheckpointLocked(overlay) }
                throw error
            }
        }
    }

    /// Runs `body` with the I/O lock of every disk held exclusive.
    private static func holdExclusive<T>(_ disks: ArraySlice<FilteredDisk>, _ body: () throws -> T) throws -> T {
        guard let first = disks.first else { return try body() }
        return try first.io.withExclusive { try holdExclusive(disks.dropFirst(), body) }
    }

    /// One disk's checkpoint; call with its release gate and its I/O lock (exclusive) held.
    private func checkpointLocked(owner newOwner: CheckpointOwner?, group: String?) throws -> (CheckpointInfo, Overlay) {
        if overlay != nil {
            throw FilterError(.checkpointOpen, "disk \(name) already has an open checkpoint; release it first (tessera filter release --disk \(name) [--abort])")
        }
        // The base becomes the point in time: make it durable as it stands.
        try image.sync()
        let created = try Overlay.create(in: stateDirectory, granularity: granularity, diskSize: size)
        do {
            if let newOwner {
                try DurableFile.write(Array(try JSONEncoder().encode(newOwner)), to: ownerPath)
            }
            if let group { try DurableFile.write(Array(group.utf8), to: groupPath) }
            let info = try tracker.checkpoint()
            overlayBox.withLock { $0 = created }
            owner.withLock { $0 = newOwner }
            checkpointGroup.withLock { $0 = group }
            readableCheckpoint.withLock { $0 = info.changeID.description }
            return (info, created)
        } catch {
            unlink(ownerPath)
            unlink(groupPath)
            try? created.destroy()
            throw error
        }
    }

    /// Undoes a checkpoint of a group whose other disks failed; no write reached the overlay
    /// (every I/O lock is still held), so dropping it loses nothing.
    private func undoCheckpointLocked(_ overlay: Overlay) {
        // The tracker folds the held marks back in memory even if it cannot save that.
        try? tracker.release(commit: false)
        try? overlay.destroy()
        forgetCheckpoint()
    }

    /// Drops everything that described the open checkpoint (its overlay is destroyed already).
    private func forgetCheckpoint() {
        overlayBox.withLock { $0 = nil }
        owner.withLock { $0 = nil }
        checkpointGroup.withLock { $0 = nil }
        readableCheckpoint.withLock { $0 = nil }
        unlink(ownerPath)
        unlink(groupPath)
    }

    /// Merges the overlay back into the base while the disk stays in use, then closes the
    /// checkpoint in the tracker (commit: the backup succeeded; abort: it did not — either
    /// way no change is lost).
    public func release(commit: Bool) throws {
        // A second release is refused at once; a checkpoint holding the gate is waited for.
        guard !releaseRunning.exchange(true, ordering: .acquiringAndReleasing) else {
            throw FilterError(.busy, "a release of disk \(name) is already running")
        }
        defer { releaseRunning.store(false, ordering: .releasing) }
        releaseGate.lock()
        defer { releaseGate.unlock() }
        guard !closing.load(ordering: .acquiring) else { throw shuttingDown() }
        guard let overlay else {
            throw FilterError(.noCheckpoint, "disk \(name) has no open checkpoint to release")
        }
        // A release that failed halfway (a full or failing state directory) is finished, as it
        // began: the caller's commit or abort was recorded with it.
        if overlay.isMerging {
            return try finishMerge(overlay, commit: overlay.releaseCommit, releaseTracker: true)
        }
        // From here the base stops being the checkpoint: its readers get errors, not bytes.
        let frozen = io.withExclusive { readableCheckpoint.withLock { id in defer { id = nil }; return id } }
        do {
            try overlay.beginMerge(commit: commit)
        } catch {
            // Nothing was merged: the base is still the checkpoint.
            readableCheckpoint.withLock { $0 = frozen }
            throw error
        }
        try finishMerge(overlay, commit: commit, releaseTracker: true)
    }

    /// Finishes a release that failed halfway, so a new checkpoint can be taken; call with
    /// the release gate held (the checkpoint path holds it).
    private func finishInterruptedRelease() throws {
        guard let overlay, overlay.isMerging else { return }
        try finishMerge(overlay, commit: overlay.releaseCommit, releaseTracker: true)
    }

    func shuttingDown() -> FilterError {
        FilterError(.busy, "the filter is shutting down; disk \(name) takes no checkpoint or release now (a release cut short finishes when the filter starts again)")
    }

    /// Copies the overlay back in batches; each batch holds the I/O lock exclusive only for
    /// itself, so clients keep working between batches. Stops between batches when the disk
    /// is closing: the overlay stays marked as merging and the next start finishes it.
    func finishMerge(_ overlay: Overlay, commit: Bool, releaseTracker: Bool) throws {
        while true {
            hooks.withLock { $0.beforeMergeBatch }?()
            if closing.load(ordering: .acquiring) { throw shuttingDown() }
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
            // A release whose tracker step was done in memory but could not be saved (a full
            // state directory) is retried by saving it; the overlay goes only after that.
            if releaseTracker && tracker.status().openCheckpoint != nil {
                try tracker.release(commit: commit)
            } else if releaseTracker {
                try tracker.persist()
            }
            try overlay.destroy()
            forgetCheckpoint()
        }
    }
}
