import BackupRepository
import BlockIO
import Foundation
import Logging
import Synchronization
import Workers

public struct BackupSettings: Sendable {
    public var disk: String
    public var tags: [String] = []
    /// Read the whole disk even if an incremental is possible.
    public var fullRead = false
    public var workers = ProcessInfo.processInfo.activeProcessorCount
    /// Read the live disk in passes and take the checkpoint only for the last small delta
    /// (sources that can: the filter); nil holds the checkpoint for the whole backup.
    public var convergence: Convergence? = .default

    public init(disk: String) { self.disk = disk }
}

/// The last line of `tessera backup --json`.
public struct BackupSummary: Codable, Sendable {
    public var type = "summary"
    public var snapshot: String
    public var disk: String
    public var mode: ChangeSourceKind
    public var changeID: String?
    public var parent: String?
    public var diskSize: UInt64
    public var bytesRead: UInt64
    public var chunksNew: Int
    public var chunksReused: Int
    public var chunksZero: Int
    public var chunksCarried: Int
    public var chunksHealed: Int
    public var bytesStored: UInt64
    public var seconds: Double
    public var fullReason: String?
    /// The consistency group (the VM's disks checkpointed at one instant), if any.
    public var group: String?
    /// What went wrong after the snapshot was saved (it is saved all the same).
    public var warnings: [String] = []
    /// The passes over the live disk before the checkpoint (converging), and why they stopped.
    public var passes: [BackupPass] = []
    public var convergence: String?
    /// How long the checkpoint was held: from taking it to its release (filter backups).
    public var checkpointSeconds: Double?
    /// What the checkpoint's overlay held at its release: the VM's writes it copied.
    public var overlayBytes: UInt64?

    enum CodingKeys: String, CodingKey {
        case type, snapshot, disk, mode, parent, seconds, group, warnings, passes, convergence
        case checkpointSeconds = "checkpoint_seconds", overlayBytes = "overlay_bytes"
        case changeID = "change_id", diskSize = "disk_size", bytesRead = "bytes_read", chunksNew = "chunks_new"
        case chunksReused = "chunks_reused", chunksZero = "chunks_zero", chunksCarried = "chunks_carried"
        case chunksHealed = "chunks_healed", bytesStored = "bytes_stored", fullReason = "full_reason"
    }
}

/// Progress as the pipeline runs (for the progress bar and `--json` lines).
public struct BackupProgress: Sendable {
    public var bytesDone: UInt64
    public var bytesPlanned: UInt64
    public var seconds: Double
}

/// One backup of one disk: a session of the change source → the plan (what to read) → the
/// chunk pipeline → the disk map and the snapshot record (the one commit point) → the
/// session committed. A failure or a cancellation at any point abandons what was written
/// (temp packs) and aborts the session, so the next backup still sees every change.
public final class BackupJob: Sendable {
    public let repository: Repository
    public let source: any ChangeSource
    public let settings: BackupSettings
    private let logger: Logger
    private let cancellation: Cancellation?

    /// - Parameter repository: open, with a shared lock held by the caller.
    public init(repository: Repository, source: any ChangeSource, settings: BackupSettings, logger: Logger,
                cancellation: Cancellation? = nil) {
        self.repository = repository
        self.source = source
        self.settings = settings
        self.logger = logger
        self.cancellation = cancellation
    }

    /// Runs the backup; `progress` is called about twice a second from another thread.
    /// - Parameter prepared: what `prepare` read before the point in time was fixed (the
    ///   nightly run converges each disk before it freezes the guest and checkpoints the VM's
    ///   disks as one group); nil prepares now.
    public func run(prepared: PreparedBackup? = nil,
                    progress: @escaping @Sendable (BackupProgress) -> Void = { _ in }) throws -> BackupSummary {
        let p = try prepared ?? prepare(progress: progress)
        defer { p.ticker.stop() }
        let (base, baseNote, writer, counters, precopy, started) = (p.base, p.baseNote, p.writer, p.counters, p.precopy, p.started)
        let chunkSize = repository.config.chunkSize
        let report = p.report
        let checkpointTaken = Date()
        let session: any ChangeSession
        do {
            session = try source.begin(base: precopy?.base ?? base, chunkSize: chunkSize, fullRead: precopy == nil && settings.fullRead,
                                       logger: logger)
        } catch {
            p.abandon()
            throw error
        }
        var summary: BackupSummary
        do {
            var fullReason: String?
            if let precopy {
                fullReason = precopy.fullReason.map { base == nil ? (baseNote ?? $0) : $0 }
            } else if case .everything(let reason) = session.changes {
                fullReason = base == nil ? (baseNote ?? reason) : reason
            }
            if let fullReason { logger.info("full read: \(fullReason)") }
            let reader = session.reader
            let allocated: [ByteRange]
            if case .everything = session.changes {
                allocated = try reader.dataRanges(in: ByteRange(offset: 0, length: reader.size))
            } else {
                allocated = []
            }
            let plan = try BackupPlan.make(diskSize: reader.size, chunkSize: chunkSize, base: precopy?.base ?? base, changes: session.changes,
                                           allocated: allocated, isStored: { writer.holds($0) })
            if plan.healedChunks > 0 {
                logger.notice("re-reading \(plan.healedChunks) chunk\(plan.healedChunks == 1 ? "" : "s") missing from the repository (healing)")
            }
            summary = try execute(plan, session: session, parent: base, precopy: precopy, writer: writer, counters: counters,
                                  fullReason: fullReason, started: started)
            report()
            summary.overlayBytes = session.overlayBytes()
        } catch {
            p.abandon()
            session.abort()
            throw error
        }
        // The snapshot is committed (its record is the one commit point): a source that cannot
        // be told so (the filter died just now) does not make the backup a failure. Its
        // checkpoint stays open and the next backup releases it; nothing is lost.
        do {
            try session.commit()
        } catch {
            let warning = "snapshot \(summary.snapshot) is saved, but \((error as? AgentError)?.message ?? "\(error)"); the next backup of disk \(settings.disk) releases the checkpoint (nothing is lost)"
            logger.warning("\(warning)")
            summary.warnings.append(warning)
        }
        if session.changeID != nil { summary.checkpointSeconds = Date().timeIntervalSince(checkpointTaken) }
        return summary
    }

    /// Everything before the point in time is fixed: the base snapshot, the writer, and (for a
    /// source that can converge) the passes over the live disk. The caller then runs it, or
    /// abandons it (`PreparedBackup.abandon`).
    public func prepare(progress: @escaping @Sendable (BackupProgress) -> Void = { _ in }) throws -> PreparedBackup {
        let started = Date()
        HeapTuning.applyOnce()
        let (base, baseNote) = RepositoryAccess.newestUsableBase(repository, disk: settings.disk)
        if let baseNote { logger.notice("\(baseNote)") }
        try cancellation?.check()
        let writer = try RepositoryAccess.writer(repository)
        let counters = PipelineCounters()
        let report = { @Sendable in
            progress(BackupProgress(bytesDone: counters.bytesRead.load(ordering: .relaxed),
                                    bytesPlanned: counters.bytesPlanned.load(ordering: .relaxed),
                                    seconds: Date().timeIntervalSince(started)))
        }
        let prepared = PreparedBackup(base: base, baseNote: baseNote, writer: writer, counters: counters, started: started,
                                      report: report, ticker: Ticker(every: 0.5, name: "tessera-progress", report))
        // Converging: the live disk is read in passes first; the checkpoint covers the rest.
        if let converging = source as? any ConvergingSource, converging.canConverge, let policy = settings.convergence {
            do {
                prepared.precopy = try converge(converging, base: base, policy: policy, writer: writer, counters: counters)
            } catch {
                prepared.abandon()
                throw error
            }
        }
        return prepared
    }

    /// vMotion's pre-copy applied to a backup (see `ConvergingSource`): passes over the live
    /// disk, each reading what the one before left behind, until what is left is small (by
    /// bytes, or by time at the last pass's speed), the pass limit is reached, or a pass does
    /// not shrink the delta to ¾ of what it read: the disk is written about as fast as it is
    /// read, and more passes would not help (the checkpoint then reads that delta). Nil when
    /// there is so little to read that the checkpoint reads it all (a quiet night's incremental).
    private func converge(_ source: any ConvergingSource, base: BackupBase?, policy: Convergence, writer: RepositoryWriter,
                          counters: PipelineCounters) throws -> Precopy? {
        let chunkSize = repository.config.chunkSize
        let live = try source.liveReader()
        var out = Precopy()
        var mark = try source.mark(logger: logger)
        var changes = try source.changes(since: base, chunkSize: chunkSize, fullRead: settings.fullRead, size: live.size)
        if case .everything(let reason) = changes {
            out.firstPassFull = true
            out.fullReason = reason
        }
        var current = base
        while true {
            try cancellation?.check()
            let allocated: [ByteRange]
            if case .everything = changes {
                allocated = try live.dataRanges(in: ByteRange(offset: 0, length: live.size))
            } else {
                allocated = []
            }
            let plan = try BackupPlan.make(diskSize: live.size, chunkSize: chunkSize, base: current, changes: changes,
                                           allocated: allocated, isStored: { writer.holds($0) })
            // Little to read: the checkpoint takes it all at once (no pass, no more marks).
            if out.passes.isEmpty && plan.bytesToRead <= policy.finalBytes {
                logger.info("no pass before the checkpoint: \(plan.bytesToRead) bytes to read")
                return nil
            }
            let passStarted = Date()
            let (map, _) = try fill(plan, from: live, writer: writer, counters: counters)
            let pass = BackupPass(bytes: plan.bytesToRead, seconds: Date().timeIntervalSince(passStarted))
            out.passes.append(pass)
            current = BackupBase(snapshot: Precopy.passRecord(disk: settings.disk, size: live.size, chunkSize: chunkSize, changeID: mark),
                                 map: map)
            let next = try source.mark(logger: logger)
            let delta = try source.changes(since: current, chunkSize: chunkSize, fullRead: false, size: live.size)
            guard case .since(let written, _) = delta else {
                out.stop = "the filter cannot say what changed during pass \(out.passes.count)"
                break
            }
            // What the next pass would read (the chunks written to), without building its plan:
            // that copies the map and looks up every chunk, too much to do twice per pass.
            let left = ChunkPipeline.segments(for: written.coalesced(), chunkSize: UInt64(chunkSize), diskSize: live.size).totalLength
            let rate = pass.seconds > 0 ? Double(pass.bytes) / pass.seconds : .infinity
            if left <= policy.finalBytes || Double(left) / rate <= policy.finalSeconds {
                out.stop = "converged: \(left) bytes left for the checkpoint"
            } else if out.passes.count >= policy.maximumPasses {
                out.stop = "pass limit (\(policy.maximumPasses)): \(left) bytes left for the checkpoint"
            } else if out.passes.count >= 2 && left * 4 > pass.bytes * 3 {
                out.stop = "not converging: \(left) bytes written during a pass that read \(pass.bytes)"
            }
            if out.stop != nil { break }
            mark = next
            changes = delta
        }
        logger.info("\(out.passes.count) pass\(out.passes.count == 1 ? "" : "es") before the checkpoint; \(out.stop ?? "")")
        out.base = current
        return out
    }

    /// A converged backup's figures, counted against the real base rather than the passes'
    /// stand-in: chunks carried over from the base snapshot, and zero chunks (holes, or chunks
    /// that became zero since the base); its mode is a full read when its first pass was.
    private static func countPasses(_ precopy: Precopy, into summary: inout BackupSummary, map: DiskMap, base: DiskMap?) {
        summary.passes = precopy.passes
        summary.convergence = precopy.stop
        if precopy.firstPassFull { summary.mode = .full }
        summary.chunksCarried = 0
        summary.chunksZero = 0
        for i in 0..<map.count {
            if let id = map[i] {
                if let base, i < base.count, base[i] == id { summary.chunksCarried += 1 }
            } else if base.map({ i >= $0.count || $0[i] != nil }) ?? true {
                summary.chunksZero += 1
            }
        }
    }

    /// Reads the planned chunks from `reader` into the repository and returns the map with
    /// them filled in, and how many were read.
    private func fill(_ plan: BackupPlan, from reader: any DiskSource, writer: RepositoryWriter,
                      counters: PipelineCounters) throws -> (DiskMap, Int) {
        counters.bytesPlanned.add(plan.bytesToRead, ordering: .relaxed)
        let results = Mutex<[(Int, ChunkID?)]>([])
        let pipeline = ChunkPipeline(source: reader, repository: repository, writer: writer,
                                     chunkSize: UInt64(plan.map.chunkSize), workers: settings.workers, counters: counters)
        try pipeline.run(segments: plan.segments, cancellation: cancellation) { index, outcome in
            results.withLock { $0.append((index, outcome.id)) }
        }
        var map = plan.map
        let read = results.withLock { $0 }
        for (index, id) in read { map[index] = id }
        return (map, read.count)
    }

    /// Reads and stores the planned chunks, then commits the snapshot.
    private func execute(_ plan: BackupPlan, session: any ChangeSession, parent base: BackupBase?, precopy: Precopy?,
                         writer: RepositoryWriter, counters: PipelineCounters, fullReason: String?, started: Date) throws -> BackupSummary {
        let (map, readCount) = try fill(plan, from: session.reader, writer: writer, counters: counters)
        // The last moment to stop without a snapshot: after this the commit point is written.
        try cancellation?.check()
        let unread = map.count - readCount
        var summary = BackupSummary(
            snapshot: "", disk: settings.disk, mode: session.kind, changeID: session.changeID, parent: base?.snapshot.id,
            diskSize: plan.map.diskSize, bytesRead: counters.bytesRead.load(ordering: .relaxed),
            chunksNew: counters.chunksNew.load(ordering: .relaxed),
            chunksReused: counters.chunksReused.load(ordering: .relaxed),
            // Chunks not read are carried over from the base (incremental) or holes (full read).
            chunksZero: counters.chunksZero.load(ordering: .relaxed) + plan.zeroedChunks + (plan.incremental ? 0 : unread),
            chunksCarried: plan.incremental ? max(0, unread - plan.zeroedChunks) : 0,
            chunksHealed: plan.healedChunks,
            bytesStored: counters.bytesStored.load(ordering: .relaxed), seconds: 0, fullReason: fullReason,
            group: session.group)
        if let precopy { Self.countPasses(precopy, into: &summary, map: map, base: precopy.firstPassFull ? nil : base?.map) }
        summary.snapshot = try RepositoryAccess.commit(writer: writer, map: map, summary: summary, tags: settings.tags,
                                                       chunkSize: plan.map.chunkSize, started: started)
        summary.seconds = Date().timeIntervalSince(started)
        return summary
    }
}

/// A backup prepared up to its point in time (`BackupJob.prepare`): the base, the writer
/// holding what the passes over the live disk stored, and where they got to.
public final class PreparedBackup: @unchecked Sendable {
    let base: BackupBase?
    let baseNote: String?
    let writer: RepositoryWriter
    let counters: PipelineCounters
    let started: Date
    let report: @Sendable () -> Void
    let ticker: Ticker
    /// Set once by `prepare`, before the object is handed out.
    var precopy: Precopy?

    init(base: BackupBase?, baseNote: String?, writer: RepositoryWriter, counters: PipelineCounters, started: Date,
         report: @escaping @Sendable () -> Void, ticker: Ticker) {
        (self.base, self.baseNote, self.writer, self.counters, self.started, self.report, self.ticker) =
            (base, baseNote, writer, counters, started, report, ticker)
    }

    /// Bytes the passes read before the checkpoint.
    public var bytesReadLive: UInt64 { precopy?.passes.reduce(0) { $0 + $1.bytes } ?? 0 }

    /// Gives the backup up: what the passes stored becomes garbage for prune.
    public func abandon() {
        ticker.stop()
        writer.abandon()
    }
}
