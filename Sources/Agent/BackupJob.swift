import BackupRepository
import BlockIO
import Foundation
import Synchronization
import TrackerControl

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

public struct BackupOptions: Sendable {
    public var repositoryPath: String
    public var disk: String
    public var filterControl: String?
    public var sourcePath: String?
    public var nbdURI: String?
    public var bitmap: String?
    public var forceFull = false
    public var tags: [String] = []
    public var workers = ProcessInfo.processInfo.activeProcessorCount

    public init(repositoryPath: String, disk: String) {
        self.repositoryPath = repositoryPath
        self.disk = disk
    }
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

    enum CodingKeys: String, CodingKey {
        case type, snapshot, disk, mode, parent, seconds
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

/// One backup of one disk: checkpoint → changed extents → chunks → disk map → snapshot
/// record (the commit point) → release.
public final class BackupJob: Sendable {
    public let options: BackupOptions

    public init(options: BackupOptions) throws {
        self.options = options
        guard options.filterControl != nil || options.sourcePath != nil || options.nbdURI != nil else {
            throw AgentError(.invalidArgument, "say where to read disk \(options.disk) from: --filter CONTROL_SOCKET, --nbd URI or --source PATH")
        }
        if options.nbdURI != nil && options.filterControl != nil {
            throw AgentError(.invalidArgument, "--nbd and --filter are two different sources of changes; give one")
        }
    }

    /// Runs the backup. `log` receives human-readable notes (e.g. why a full read happened);
    /// `progress` is called about twice a second from another thread.
    public func run(log: @escaping @Sendable (String) -> Void = { _ in },
                    progress: @escaping @Sendable (BackupProgress) -> Void = { _ in }) throws -> BackupSummary {
        let started = Date()
        HeapTuning.applyOnce()
        let repository = try RepositoryAccess.open(options.repositoryPath)
        let lock = try RepositoryAccess.lock(repository, .shared)
        defer { lock.release() }

        if let control = options.filterControl {
            return try runWithFilter(control: control, repository: repository, started: started, log: log, progress: progress)
        }
        let source: any DiskSource
        var mode: ChangeSourceKind
        var changed: [ByteRange]? = nil
        var fullReason: String? = nil
        let (parent, parentMap, parentNote) = RepositoryAccess.newestUsableSnapshot(repository, disk: options.disk)
        if let uri = options.nbdURI {
            let context = options.bitmap.map { $0.hasPrefix("qemu:dirty-bitmap:") ? $0 : "qemu:dirty-bitmap:\($0)" }
            let nbd = try NBDSource(uri: uri, contexts: context.map { [$0] } ?? [])
            source = nbd
            mode = .nbdBitmap
            if let context {
                if !nbd.negotiatedContexts.contains(context) {
                    fullReason = "the NBD server does not offer \(context) (bitmap missing or inconsistent)"
                } else if let reason = baseMismatch(parent: parent, parentMap: parentMap, parentNote: parentNote,
                                                    size: nbd.size, chunkSize: repository.config.chunkSize, expectKind: .nbdBitmap) {
                    fullReason = reason
                } else {
                    changed = try nbd.status(context: context, in: ByteRange(offset: 0, length: nbd.size))
                        .filter { $0.1 & 1 == 1 }.map(\.0).coalesced()
                }
            } else {
                fullReason = "no --bitmap given for the NBD source"
            }
        } else {
            source = try ImageSource(path: options.sourcePath!)
            mode = .scan
        }
        if options.forceFull { fullReason = "--full was given"; changed = nil }
        if fullReason != nil { mode = .full }
        if let fullReason { log("full read: \(fullReason)") }
        let useParent = changed != nil
        let summary = try backUp(source: source, repository: repository, mode: mode, changed: changed,
                                 parent: useParent ? parent : nil, parentMap: useParent ? parentMap : nil,
                                 dedupParent: parent, changeID: nil, fullReason: fullReason, started: started,
                                 log: log, progress: progress)
        return summary
    }

    private func runWithFilter(control path: String, repository: Repository, started: Date,
                               log: @escaping @Sendable (String) -> Void,
                               progress: @escaping @Sendable (BackupProgress) -> Void) throws -> BackupSummary {
        let control: ControlClient
        let checkpoint: ControlProtocol.CheckpointReply
        do {
            control = try ControlClient(path: path)
            do {
                checkpoint = try control.checkpoint(disk: options.disk)
            } catch let e as FilterError where e.code == .checkpointOpen {
                // A checkpoint nobody can be using any more (its owner died, its lease ran out
                // and no reader is connected) is released with abort: nothing is lost. One
                // that may be in use is left alone, and the message says who holds it.
                guard let open = try control.status(disk: options.disk).first?.checkpoint else { throw e }
                guard let stale = open.stale else {
                    throw AgentError(.filter, Self.heldMessage(open, disk: options.disk, control: path))
                }
                log("released checkpoint \(open.changeID) with abort (nothing is lost): \(stale)")
                _ = try control.release(disk: options.disk, commit: false)
                checkpoint = try control.checkpoint(disk: options.disk)
            }
        } catch let e as FilterError {
            throw AgentError(.filter, e.message)
        }
        do {
            let source = try ImageSource(path: options.sourcePath ?? checkpoint.path)
            guard source.size == checkpoint.size else {
                throw AgentError(.source, "\(source.description) is \(source.size) bytes but the filter serves disk \(options.disk) as \(checkpoint.size) bytes; is --source the same disk?")
            }
            let (parent, parentMap, parentNote) = RepositoryAccess.newestUsableSnapshot(repository, disk: options.disk)
            var fullReason: String? = options.forceFull ? "--full was given" : nil
            var changed: [ByteRange]? = nil
            var zeroed: [ByteRange] = []
            if fullReason == nil {
                fullReason = baseMismatch(parent: parent, parentMap: parentMap, parentNote: parentNote, size: source.size,
                                          chunkSize: repository.config.chunkSize, expectKind: .cbt)
            }
            if fullReason == nil, let parent, let since = parent.changeID {
                do {
                    let extents = try control.allChanges(disk: options.disk, since: since)
                    changed = extents.filter { !$0.zero }.map { ByteRange(offset: $0.offset, length: $0.length) }
                    zeroed = extents.filter(\.zero).map { ByteRange(offset: $0.offset, length: $0.length) }
                } catch let e as FilterError where e.code == .fullReadRequired {
                    fullReason = "the filter cannot answer changes since \(since): \(e.message)"
                }
            }
            if let fullReason { log("full read: \(fullReason)") }
            let useParent = changed != nil
            let summary = try backUp(source: source, repository: repository, mode: useParent ? .cbt : .full,
                                     changed: changed.map { $0 + zeroed }, zeroHint: zeroed,
                                     parent: useParent ? parent : nil, parentMap: useParent ? parentMap : nil,
                                     dedupParent: parent, changeID: checkpoint.changeID, fullReason: fullReason,
                                     started: started, log: log, progress: progress)
            do {
                _ = try control.release(disk: options.disk, commit: true)
            } catch {
                throw AgentError(.filter, "snapshot \(summary.snapshot) is committed, but releasing the checkpoint failed: \(error). Run `tessera filter release --control \(path) --disk \(options.disk)`")
            }
            return summary
        } catch {
            // Nothing is lost: the tracker keeps every mark and the next backup asks again
            // from the older change ID its newest snapshot holds.
            _ = try? control.release(disk: options.disk, commit: false)
            throw error
        }
    }

    /// Who holds a checkpoint that is in use, and what to do.
    static func heldMessage(_ open: CheckpointStatus, disk: String, control: String) -> String {
        let release = "tessera filter release --control \(control) --disk \(disk) --abort"
        if let readers = open.readers, readers > 0 {
            return "disk \(disk) has checkpoint \(open.changeID) open and \(readers) reader\(readers == 1 ? " is" : "s are") still copying \(disk)@checkpoint; wait for the copy to finish (its tool then releases the checkpoint), or stop it and run `\(release)`"
        }
        guard let owner = open.owner else {
            return "disk \(disk) has checkpoint \(open.changeID) open, taken by an unknown holder; if nothing is reading it, run `\(release)` (nothing is lost)"
        }
        if let pid = owner.pid {
            return "a backup of disk \(disk) is running (process \(pid) on \(owner.host) holds checkpoint \(open.changeID)); wait for it to finish"
        }
        return "disk \(disk) has checkpoint \(open.changeID) open, held by \(owner.holderDescription); when its reader is done, release it (`\(release)`), or wait for the lease to run out"
    }

    /// Why an incremental on top of `parent` is not possible, or nil when it is.
    private func baseMismatch(parent: SnapshotRecord?, parentMap: DiskMap?, parentNote: String?, size: UInt64,
                              chunkSize: Int, expectKind: ChangeSourceKind) -> String? {
        guard let parent else { return parentNote ?? "no earlier snapshot of disk \(options.disk) in the repository" }
        guard parentMap != nil else { return parentNote ?? "the disk map of snapshot \(parent.id) cannot be read" }
        if parent.diskSize != size { return "the disk size changed from \(parent.diskSize) to \(size) bytes since snapshot \(parent.id)" }
        if parent.chunkSize != chunkSize { return "snapshot \(parent.id) uses \(parent.chunkSize)-byte chunks, the repository now \(chunkSize)" }
        switch expectKind {
        case .cbt:
            guard let id = parent.changeID else { return "snapshot \(parent.id) was not taken through the filter (no change ID)" }
            guard ChangeID(id) != nil else { return "snapshot \(parent.id) holds '\(id)', not a change ID of the filter" }
        case .nbdBitmap:
            guard parent.source == .nbdBitmap || parent.source == .full else {
                return "snapshot \(parent.id) was not taken from an NBD dirty bitmap"
            }
        default: break
        }
        return nil
    }

    /// The common part: read `changed` (or every allocated range when nil), build the new
    /// disk map on top of the parent's, store it, commit the snapshot.
    private func backUp(source: any DiskSource, repository: Repository, mode: ChangeSourceKind, changed: [ByteRange]?,
                        zeroHint: [ByteRange] = [], parent: SnapshotRecord?, parentMap: DiskMap?,
                        dedupParent: SnapshotRecord?, changeID: String?, fullReason: String?, started: Date,
                        log: @escaping @Sendable (String) -> Void,
                        progress: @escaping @Sendable (BackupProgress) -> Void) throws -> BackupSummary {
        let chunkSize = UInt64(repository.config.chunkSize)
        let size = source.size
        let whole = ByteRange(offset: 0, length: size)
        // A synthetic full: start from the parent's map (unchanged chunks carried over) or
        // from an all-zero map when everything allocated will be read.
        var map = parentMap.map { RepositoryAccess.resized($0, to: size) } ?? RepositoryAccess.emptyMap(size: size, chunkSize: Int(chunkSize))
        var toRead: [ByteRange]
        var healed = 0
        var zeroedChunks = 0
        if let changed {
            toRead = changed
            // Ranges trimmed or zeroed since the parent: whole chunks become zero entries
            // without a read (the last, partial chunk too when the range reaches the end);
            // partial chunks are read.
            var zeroChunks: [ByteRange] = []
            for z in zeroHint {
                let first = (z.offset + chunkSize - 1) / chunkSize
                let end = z.end >= size ? (size + chunkSize - 1) / chunkSize : z.end / chunkSize
                guard first < end else { continue }
                for i in first..<end { RepositoryAccess.set(&map, Int(i), nil) }
                zeroedChunks += Int(end - first)
                zeroChunks.append(ByteRange(offset: first * chunkSize, length: min(end * chunkSize, size) - first * chunkSize))
            }
            toRead = ChunkPipeline.subtract(zeroChunks.coalesced(), from: toRead.coalesced())
            // Self-healing: a carried-over chunk that is no longer in the repository (damaged
            // and set aside, or lost) is read again from the source, whatever the tracker says.
            for i in 0..<RepositoryAccess.count(map) {
                if let id = RepositoryAccess.get(map, i), !repository.contains(id) {
                    toRead.append(ByteRange(offset: UInt64(i) * chunkSize, length: chunkSize))
                    healed += 1
                }
            }
            if healed > 0 { log("re-reading \(healed) chunks missing from the repository (healing)") }
        } else {
            toRead = try source.dataRanges(in: whole)
        }
        let segments = ChunkPipeline.segments(for: toRead, chunkSize: chunkSize, diskSize: size)
        if changed == nil {
            // Not read = a hole = zero; the map already says so.
        } else {
            // Chunks about to be read lose their carried-over entry until the pipeline sets it.
        }
        let counters = PipelineCounters()
        counters.bytesPlanned.store(segments.totalLength, ordering: .relaxed)
        let writer = try RepositoryAccess.writer(repository)
        let results = Mutex<[(Int, ChunkID?)]>([])
        let pipeline = ChunkPipeline(source: source, repository: repository, writer: writer, chunkSize: chunkSize,
                                     workers: options.workers, counters: counters)
        let done = Atomic<Bool>(false)
        let reporter = Thread {
            while !done.load(ordering: .relaxed) {
                progress(BackupProgress(bytesDone: counters.bytesRead.load(ordering: .relaxed),
                                        bytesPlanned: counters.bytesPlanned.load(ordering: .relaxed),
                                        seconds: Date().timeIntervalSince(started)))
                Thread.sleep(forTimeInterval: 0.5)
            }
        }
        reporter.start()
        defer { done.store(true, ordering: .relaxed) }
        do {
            try pipeline.run(segments: segments) { index, outcome in
                results.withLock { $0.append((index, outcome.id)) }
            }
        } catch {
            writer.abandon()
            throw error
        }
        for (index, id) in results.withLock({ $0 }) { RepositoryAccess.set(&map, index, id) }
        progress(BackupProgress(bytesDone: counters.bytesRead.load(ordering: .relaxed),
                                bytesPlanned: counters.bytesPlanned.load(ordering: .relaxed),
                                seconds: Date().timeIntervalSince(started)))
        let seconds = Date().timeIntervalSince(started)
        var summary = BackupSummary(
            snapshot: "", disk: options.disk, mode: mode, changeID: changeID, parent: parent?.id ?? dedupParent?.id,
            diskSize: size, bytesRead: counters.bytesRead.load(ordering: .relaxed),
            chunksNew: counters.chunksNew.load(ordering: .relaxed),
            chunksReused: counters.chunksReused.load(ordering: .relaxed),
            // Chunks not read are carried over from the parent (incremental) or holes (full read).
            chunksZero: counters.chunksZero.load(ordering: .relaxed) + zeroedChunks
                + (parentMap == nil ? RepositoryAccess.count(map) - results.withLock { $0.count } : 0),
            chunksCarried: parentMap == nil ? 0 : max(0, RepositoryAccess.count(map) - results.withLock { $0.count } - zeroedChunks),
            chunksHealed: healed,
            bytesStored: counters.bytesStored.load(ordering: .relaxed), seconds: seconds, fullReason: fullReason)
        do {
            summary.snapshot = try RepositoryAccess.commit(writer: writer, map: map, summary: summary, tags: options.tags,
                                                           chunkSize: Int(chunkSize), started: started)
        } catch {
            writer.abandon()
            throw error
        }
        summary.seconds = Date().timeIntervalSince(started)
        return summary
    }
}
