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

    enum CodingKeys: String, CodingKey {
        case type, snapshot, disk, mode, parent, seconds, group, warnings
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
    public func run(progress: @escaping @Sendable (BackupProgress) -> Void = { _ in }) throws -> BackupSummary {
        let started = Date()
        HeapTuning.applyOnce()
        let chunkSize = repository.config.chunkSize
        let (base, baseNote) = RepositoryAccess.newestUsableBase(repository, disk: settings.disk)
        if let baseNote { logger.notice("\(baseNote)") }
        try cancellation?.check()
        let session = try source.begin(base: base, chunkSize: chunkSize, fullRead: settings.fullRead, logger: logger)
        let writer: RepositoryWriter
        do {
            writer = try RepositoryAccess.writer(repository)
        } catch {
            session.abort()
            throw error
        }
        var summary: BackupSummary
        do {
            var fullReason: String?
            if case .everything(let reason) = session.changes {
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
            let plan = try BackupPlan.make(diskSize: reader.size, chunkSize: chunkSize, base: base, changes: session.changes,
                                           allocated: allocated, isStored: { self.repository.contains($0) })
            if plan.healedChunks > 0 {
                logger.notice("re-reading \(plan.healedChunks) chunk\(plan.healedChunks == 1 ? "" : "s") missing from the repository (healing)")
            }
            summary = try execute(plan, session: session, base: base, writer: writer, fullReason: fullReason,
                                  started: started, progress: progress)
        } catch {
            writer.abandon()
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
        return summary
    }

    /// Reads and stores the planned chunks, then commits the snapshot.
    private func execute(_ plan: BackupPlan, session: any ChangeSession, base: BackupBase?, writer: RepositoryWriter,
                         fullReason: String?, started: Date,
                         progress: @escaping @Sendable (BackupProgress) -> Void) throws -> BackupSummary {
        let counters = PipelineCounters()
        counters.bytesPlanned.store(plan.bytesToRead, ordering: .relaxed)
        let report = { @Sendable in
            progress(BackupProgress(bytesDone: counters.bytesRead.load(ordering: .relaxed),
                                    bytesPlanned: counters.bytesPlanned.load(ordering: .relaxed),
                                    seconds: Date().timeIntervalSince(started)))
        }
        let ticker = Ticker(every: 0.5, name: "tessera-progress", report)
        defer { ticker.stop() }
        let results = Mutex<[(Int, ChunkID?)]>([])
        let pipeline = ChunkPipeline(source: session.reader, repository: repository, writer: writer,
                                     chunkSize: UInt64(plan.map.chunkSize), workers: settings.workers, counters: counters)
        try pipeline.run(segments: plan.segments, cancellation: cancellation) { index, outcome in
            results.withLock { $0.append((index, outcome.id)) }
        }
        var map = plan.map
        let read = results.withLock { $0 }
        for (index, id) in read { map[index] = id }
        report()
        // The last moment to stop without a snapshot: after this the commit point is written.
        try cancellation?.check()
        let unread = map.count - read.count
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
        summary.snapshot = try RepositoryAccess.commit(writer: writer, map: map, summary: summary, tags: settings.tags,
                                                       chunkSize: plan.map.chunkSize, started: started)
        summary.seconds = Date().timeIntervalSince(started)
        return summary
    }
}
