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
        releaseGate.lock()
        defer { releaseGate.unlock() }
        guard !closing.load(ordering: .acquiring) else { throw shuttingDown() }
        return try io.withExclusive {
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
                let info = try tracker.checkpoint()
                overlayBox.withLock { $0 = created }
                owner.withLock { $0 = newOwner }
                readableCheckpoint.withLock { $0 = info.changeID.description }
                return info
            } catch {
                unlink(ownerPath)
                try? created.destroy()
                throw error
            }
        }
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

    private func shuttingDown() -> FilterError {
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
            overlayBox.withLock { $0 = nil }
            owner.withLock { $0 = nil }
            readableCheckpoint.withLock { $0 = nil }
            unlink(ownerPath)
        }
    }
}
