import BlockIO
import Synchronization
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The change block tracking core of one disk: marks, checkpoints, queries, persistence.
///
/// Marking is synchronous and never suspends: the filter calls `markWrite` / `markZero`
/// before it issues the data write, and lets the write through only after the call returned.
/// When a write touches an activity log extent that is not yet "hot", the call appends a log
/// record and waits for its fdatasync (group commit: concurrent callers share one record and
/// one sync). That wait happens outside the main lock, so marks into hot extents and queries
/// keep going meanwhile.
///
/// Lock order: log lock → persist lock → main lock. The main lock is never held across I/O.
public final class ChangeTracker: Sendable {
    public let stateDirectory: String
    public let configuration: TrackerConfiguration

    let statePath: String
    let logPath: String
    let inUsePath: String

    let state: Mutex<TrackerState>
    let logWriter: Mutex<LogWriter>
    /// Serialises state file writes so they land in the order they were encoded; counts them.
    let persistLock = Mutex<UInt64>(0)

    struct LogWriter: ~Copyable {
        var log: ActivityLog
        /// Every batch up to this one is durable in the log.
        var durableBatch: UInt64 = 0
    }

    /// A mark touching more extents than this persists the state file instead of logging
    /// (a whole-disk trim would otherwise cycle the ring).
    static let directPersistExtentThreshold = ActivityLog.extentsPerRecord * 4

    init(stateDirectory: String, configuration: TrackerConfiguration, state: TrackerState, log: consuming ActivityLog) {
        self.stateDirectory = stateDirectory
        self.configuration = configuration
        statePath = Self.statePath(in: stateDirectory)
        logPath = Self.logPath(in: stateDirectory)
        inUsePath = Self.inUsePath(in: stateDirectory)
        self.state = Mutex(state)
        logWriter = Mutex(LogWriter(log: log))
    }

    static func statePath(in directory: String) -> String { "\(directory)/tracker.state" }
    static func logPath(in directory: String) -> String { "\(directory)/activity.log" }
    static func inUsePath(in directory: String) -> String { "\(directory)/in-use" }

    // MARK: - Marking

    /// Marks a byte range written. Call it before the data write is issued; let the write
    /// through only after it returns (the range is then durably recorded, see the crash rule).
    /// - Throws: `invalidArgument` for a range past the end of the disk, `closed`, `io` when
    ///   the activity log cannot be written (then the write must fail too).
    public func markWrite(_ range: ByteRange) throws { try mark(range, zero: false) }

    /// Marks a trim or write-zeroes. Blocks the range covers wholly are tagged "reads as zero".
    public func markZero(_ range: ByteRange) throws { try mark(range, zero: true) }

    private func mark(_ range: ByteRange, zero: Bool) throws {
        enum Next { case done, waitFor(UInt64), persist }
        let extentShift = UInt64(configuration.activityLogExtentSize.trailingZeroBitCount)
        let next: Next = try state.withLock { s throws(TrackerError) -> Next in
            guard !s.closed else { throw Self.closedError() }
            try Self.check(range, diskSize: s.map.diskSize)
            guard !range.isEmpty else { return .done }
            // The mark goes into memory first: a persist that encodes the state after this point
            // contains it, and the log record below covers any crash before such a persist.
            if zero { s.map.markZero(range) } else { s.map.markWrite(range) }
            let extents = (range.offset >> extentShift)...((range.end - 1) >> extentShift)
            if extents.count > Self.directPersistExtentThreshold { return .persist }
            var needsLog = false
            for e in extents where s.hot[e] == nil {
                s.pending.insert(e)
                needsLog = true
            }
            return needsLog ? .waitFor(s.nextBatch) : .done
        }
        switch next {
        case .done: return
        case .waitFor(let batch): try writeLogBatch(until: batch)
        case .persist: try persistState(identity: nil)
        }
    }

    /// Returns once batch `batch` is durable in the log, writing it if no one else has.
    private func writeLogBatch(until batch: UInt64) throws {
        let slots = UInt64(configuration.activityLogSlots)
        try logWriter.withLock { (w: inout LogWriter) throws in
            if w.durableBatch >= batch { return }
            let (extents, id, generation) = state.withLock { s in
                let e = s.pending.sorted()
                s.pending.removeAll(keepingCapacity: true)
                let id = s.nextBatch
                s.nextBatch += 1
                return (e, id, s.generation)
            }
            var written: [(UInt64, ArraySlice<UInt64>)] = []
            do {
                var start = 0
                while start < extents.count {
                    let chunk = extents[start..<min(start + ActivityLog.extentsPerRecord, extents.count)]
                    let (sequence, ringFull) = state.withLock { s in
                        s.lastAssignedLogSequence += 1
                        let q = s.lastAssignedLogSequence
                        return (q, q > slots && q - slots > s.persistedLogSequence)
                    }
                    // The slot still holds a record the state file does not contain yet:
                    // persist first so overwriting it loses nothing.
                    if ringFull { try persistState(identity: nil) }
                    try w.log.append(sequence: sequence, generation: generation, extents: chunk)
                    written.append((sequence, chunk))
                    start = chunk.endIndex
                }
                try w.log.sync()
            } catch {
                // Keep the extents pending: the next batch logs them (waiters on this batch
                // then see a later batch durable, which covers them).
                state.withLock { $0.pending.formUnion(extents) }
                throw TrackerError(.io, "cannot write the activity log \(logPath): \(error); the write must not be let through; check the state directory's file system", cause: error)
            }
            w.durableBatch = id
            state.withLock { s in
                for (sequence, chunk) in written where sequence > s.encodedLogSequence {
                    for e in chunk { s.hot[e] = sequence }
                }
            }
        }
    }

    // MARK: - Checkpoints

    /// Closes the current epoch and returns its change ID `G/E`; new marks belong to E+1 and
    /// are held apart until `release`. Durable before it returns.
    /// - Throws: `checkpointOpen` when one is open (release it first), `io`.
    public func checkpoint() throws -> CheckpointInfo {
        let info = try state.withLock { s throws(TrackerError) -> CheckpointInfo in
            guard !s.closed else { throw Self.closedError() }
            if let open = s.checkpoint {
                throw TrackerError(.checkpointOpen, "checkpoint \(open.changeID) is still open: release it (commit or abort) before taking another")
            }
            let sequence = s.map.closeEpoch()
            var previous: ChangeID?
            if let committed = s.lastCommitted, committed.generation == s.generation, committed.sequence >= s.map.baseSequence {
                previous = committed
            }
            let info = CheckpointInfo(changeID: ChangeID(generation: s.generation, sequence: sequence), previous: previous,
                                      createdAt: Int64(Date().timeIntervalSince1970))
            s.checkpoint = info
            return info
        }
        do {
            try persistState(identity: nil)
        } catch {
            // All or nothing: undo the checkpoint in memory the way an abort would (marks held
            // apart join the current epoch, none is lost). The state file on disk still has no
            // checkpoint: it is replaced whole or not at all. The sequence stays used; no one
            // was handed its change ID.
            state.withLock { s in
                if s.checkpoint?.changeID == info.changeID {
                    s.map.fold()
                    s.checkpoint = nil
                }
            }
            throw TrackerError(.io, "checkpoint \(info.changeID) could not be saved (\(error)), so it was not taken; free space in \(stateDirectory) and retry", cause: error)
        }
        return info
    }

    /// Ends the open checkpoint. Commit and abort both keep every mark (the held marks join
    /// the current epoch); commit records the checkpoint as `lastCommitted`, which becomes the
    /// lower bound of the next checkpoint's `.checkpoint` view. Durable before it returns.
    /// - Throws: `noCheckpoint` when none is open, `io`.
    public func release(commit: Bool) throws {
        try state.withLock { s throws(TrackerError) in
            guard !s.closed else { throw Self.closedError() }
            guard let open = s.checkpoint else {
                throw TrackerError(.noCheckpoint, "no checkpoint is open: nothing to release")
            }
            s.map.fold()
            s.checkpoint = nil
            if commit { s.lastCommitted = open.changeID }
        }
        try persistState(identity: nil)
    }

    // MARK: - Queries

    /// The blocks changed after `changeID`, up to now (including marks held by an open
    /// checkpoint), within `range` (default: the whole disk) aligned outward to blocks.
    /// - Throws: `fullReadRequired` for another generation, a sequence older than
    ///   `baseSequence` or newer than the last checkpoint: never an empty answer for those.
    ///   `invalidArgument` for a range past the end of the disk.
    public func changes(since changeID: ChangeID, in range: ByteRange? = nil,
                        limit: Int = ChangePage.defaultExtentLimit) throws -> ChangePage {
        try state.withLock { s throws(TrackerError) -> ChangePage in
            guard changeID.generation == s.generation else {
                throw TrackerError(.fullReadRequired, "change ID \(changeID) belongs to generation \(changeID.generation.uuidString), but this disk's tracker is on generation \(s.generation.uuidString) (started because: \(s.generationReason)); a full read is required")
            }
            guard changeID.sequence >= s.map.baseSequence else {
                throw TrackerError(.fullReadRequired, "change ID \(changeID) is too old: the tracker keeps history from \(ChangeID(generation: s.generation, sequence: s.map.baseSequence)) on (per-block epochs are one byte); a full read is required")
            }
            guard changeID.sequence <= s.map.lastClosed else {
                throw TrackerError(.fullReadRequired, "change ID \(changeID) is newer than the last checkpoint \(ChangeID(generation: s.generation, sequence: s.map.lastClosed)): this tracker never handed it out (state restored from an older copy?); a full read is required")
            }
            return try Self.page(s.map, range: range, limit: limit, selection: .since(changeID.sequence))
        }
    }

    /// One of the live views the filter exports as `qemu:dirty-bitmap:` contexts.
    /// - Throws: `noCheckpoint` for `.checkpoint` without an open checkpoint, `invalidArgument`.
    public func changes(view: ChangeView, in range: ByteRange, limit: Int = ChangePage.defaultExtentLimit) throws -> ChangePage {
        try state.withLock { s throws(TrackerError) -> ChangePage in
            switch view {
            case .active:
                return try Self.page(s.map, range: range, limit: limit, selection: .active)
            case .checkpoint:
                guard let open = s.checkpoint else {
                    throw TrackerError(.noCheckpoint, "no checkpoint is open: take one before reading the checkpoint view")
                }
                return try Self.page(s.map, range: range, limit: limit, selection: .checkpoint(lower: open.previous?.sequence))
            }
        }
    }

    private static func page(_ map: DirtyMap, range: ByteRange?, limit: Int, selection: DirtyMap.Selection) throws(TrackerError) -> ChangePage {
        let range = range ?? ByteRange(offset: 0, length: map.diskSize)
        try check(range, diskSize: map.diskSize)
        guard limit > 0 else { throw TrackerError(.invalidArgument, "page limit \(limit) is invalid: ask for at least one extent") }
        let aligned = range.alignedOutward(to: map.granularity, clippedAt: map.diskSize)
        guard !aligned.isEmpty else { return ChangePage(extents: [], processed: aligned) }
        let blocks = map.blocks(touching: aligned)
        let (runs, end) = map.runs(in: blocks, limit: limit, selection: selection)
        let g = map.granularity
        let extents = runs.map { run, zero in
            let start = UInt64(run.lowerBound) * g
            return ChangedExtent(range: ByteRange(offset: start, length: min(UInt64(run.upperBound) * g, map.diskSize) - start), readsAsZero: zero)
        }
        let processedEnd = min(UInt64(end) * g, map.diskSize)
        return ChangePage(extents: extents, processed: ByteRange(offset: aligned.offset, length: processedEnd - aligned.offset))
    }

    static func check(_ range: ByteRange, diskSize: UInt64) throws(TrackerError) {
        guard range.offset <= diskSize, range.length <= diskSize - range.offset else {
            throw TrackerError(.invalidArgument, "byte range offset \(range.offset) length \(range.length) goes past the end of the disk (\(diskSize) bytes); clip it to the disk")
        }
    }

    static func closedError() -> TrackerError {
        TrackerError(.closed, "the change tracker is closed; open it again to mark or query")
    }

    // MARK: - Generations

    /// Starts a new generation at a new disk size: every old change ID then needs a full read.
    /// Any open checkpoint is dropped. Durable before it returns.
    public func resize(to newSize: UInt64) throws {
        guard newSize <= TrackerConfiguration.maximumDiskSize else {
            throw TrackerError(.invalidArgument, "disk size \(newSize) is past the supported maximum of 16 TiB")
        }
        try state.withLock { s throws(TrackerError) in
            guard !s.closed else { throw Self.closedError() }
            s.startGeneration(diskSize: newSize, reason: "the disk was resized from \(s.map.diskSize) to \(newSize) bytes")
        }
        try persistState(identity: nil)
    }

    /// Starts a new generation (the disk was written around the filter, restored, ...).
    public func reset(reason: String) throws {
        try state.withLock { s throws(TrackerError) in
            guard !s.closed else { throw Self.closedError() }
            s.startGeneration(diskSize: s.map.diskSize, reason: "reset: \(reason)")
        }
        try persistState(identity: nil)
    }

    // MARK: - Status and persistence

    public func status() -> TrackerStatus {
        state.withLock { s in
            TrackerStatus(generation: s.generation, generationReason: s.generationReason,
                          currentChangeID: ChangeID(generation: s.generation, sequence: s.map.lastClosed),
                          epoch: s.map.currentEpoch, diskSize: s.map.diskSize, granularity: s.map.granularity,
                          openCheckpoint: s.checkpoint, lastCommitted: s.lastCommitted, baseSequence: s.map.baseSequence,
                          oldestAnswerable: ChangeID(generation: s.generation, sequence: s.map.baseSequence),
                          cleanOpen: s.cleanOpen, openReport: s.openReport, memoryFootprint: s.memoryFootprint)
        }
    }

    /// Writes the state file (call it periodically: it bounds crash replay and frees the ring).
    public func persist() throws {
        try persistState(identity: nil)
    }

    /// Encodes the state under the main lock and writes it durably outside it.
    func persistState(identity: FileIdentity?) throws {
        try persistLock.withLock { count throws in
            let (bytes, logSequence) = state.withLock { s in
                if let identity { s.identity = identity }
                let logSequence = s.lastAssignedLogSequence
                let bytes = StateFile.encode(generation: s.generation, generationReason: s.generationReason, map: s.map,
                                             checkpoint: s.checkpoint, lastCommitted: s.lastCommitted,
                                             identity: s.identity, logSequence: logSequence)
                // From here a mark into a formerly hot extent must log again: this encoded state
                // may not contain it, and its old record will count as contained.
                s.encodedLogSequence = max(s.encodedLogSequence, logSequence)
                s.hot = s.hot.filter { $0.value > logSequence }
                return (bytes, logSequence)
            }
            do {
                try DurableFile.write(bytes, to: statePath)
            } catch {
                throw TrackerError(.io, "cannot save the tracker state \(statePath): \(error); free space or fix the state directory, then persist again", cause: error)
            }
            state.withLock { $0.persistedLogSequence = max($0.persistedLogSequence, logSequence) }
            count += 1
        }
    }

    /// Clean shutdown: saves the state with the disk's identity now, then clears the in-use
    /// flag. Marks after this throw `closed`.
    /// - Parameter identity: the disk file's identity at close (compared at the next open).
    public func close(identity: FileIdentity?) throws {
        let alreadyClosed = state.withLock { s in
            defer { s.closed = true }
            return s.closed
        }
        guard !alreadyClosed else { return }
        try persistState(identity: identity)
        if unlink(inUsePath) != 0 && errno != ENOENT {
            throw TrackerError(.io, "cannot clear the in-use flag \(inUsePath): errno \(errno); the next open will treat the shutdown as unclean")
        }
        do { try DurableFile.syncDirectory(stateDirectory) } catch {
            throw TrackerError(.io, "cannot sync the state directory \(stateDirectory): \(error)", cause: error)
        }
    }
}
