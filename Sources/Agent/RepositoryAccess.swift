import BackupRepository
import BlockIO
import Foundation
import Synchronization
import Workers

/// The agent's uses of the repository, with repository errors turned into agent errors
/// that carry the CLI's exit-code categories (no repository, locked).
public enum RepositoryAccess {
    public static func open(_ path: String) throws -> Repository {
        do {
            return try Repository.open(at: path)
        } catch let e as RepositoryError {
            switch e.code {
            case .notARepository, .notFound:
                throw AgentError(.noRepository, e.message, cause: e)
            default:
                throw AgentError(.repository, e.message, cause: e)
            }
        }
    }

    public static func lock(_ repository: Repository, _ kind: LockKind) throws -> Releasable {
        do {
            return Releasable(try repository.lock(kind))
        } catch let e as RepositoryError where e.code == .locked {
            throw AgentError(.locked, e.message, cause: e)
        }
    }

    /// The lock of a command that only reads: shared, or none (`--no-lock`, or a repository
    /// that cannot be written, which `warn` is told about).
    public static func lockForReading(_ repository: Repository, _ locking: ReadLocking, warn: (String) -> Void) throws -> Releasable {
        do {
            return Releasable(try repository.lockForReading(locking, warn: warn))
        } catch let e as RepositoryError where e.code == .locked {
            throw AgentError(.locked, e.message, cause: e)
        } catch let e as RepositoryError {
            throw AgentError(.repository, e.message, cause: e)
        }
    }

    /// A held lock (or none), refreshed in the background so a long job's lock never looks
    /// stale, and released once (a lock left behind by a crash is detectably stale).
    public final class Releasable: Sendable {
        let lock: RepositoryLock?
        private let refresher: Ticker?
        private let released = Atomic<Bool>(false)

        init(_ lock: RepositoryLock?) {
            self.lock = lock
            refresher = lock.map { lock in Ticker(every: 300, name: "tessera-lock-refresh") { try? lock.refresh() } }
        }

        public func release() {
            guard !released.exchange(true, ordering: .relaxed) else { return }
            refresher?.stop()
            try? lock?.release()
        }
    }

    /// The newest snapshot of `disk` whose map reads back, as the base of the next backup,
    /// with a note when newer ones were skipped (a damaged base is never built on).
    static func newestUsableBase(_ repository: Repository, disk: String) -> (BackupBase?, String?) {
        let all: [SnapshotRecord]
        do {
            all = try repository.snapshots().filter { $0.diskName == disk }
        } catch {
            return (nil, "the snapshot list cannot be read: \(error)")
        }
        var note: String?
        for record in all.reversed() {
            do {
                return (BackupBase(snapshot: record, map: try repository.readDiskMap(record.diskMap)), note)
            } catch {
                note = "the newest snapshot \(record.id) of disk \(disk) is damaged (\(error)); an older one is the base"
            }
        }
        if let note { return (nil, note + ", and no older snapshot is usable") }
        return (nil, nil)
    }

    static func writer(_ repository: Repository) throws -> RepositoryWriter {
        do { return try repository.makeWriter() } catch let e as RepositoryError {
            throw AgentError(.repository, e.message, cause: e)
        }
    }

    /// Writes the map, then the snapshot record: the one commit point of the backup.
    static func commit(writer: RepositoryWriter, map: DiskMap, summary: BackupSummary, tags: [String],
                       chunkSize: Int, started: Date) throws -> String {
        let mapID = try writer.writeDiskMap(map)
        let record = SnapshotRecord(
            diskName: summary.disk, time: started, diskSize: summary.diskSize, chunkSize: chunkSize,
            parent: summary.parent, changeID: summary.changeID,
            source: SnapshotRecord.Source(rawValue: summary.mode.rawValue) ?? .full, tags: tags,
            stats: SnapshotRecord.Stats(bytesRead: summary.bytesRead, chunksNew: summary.chunksNew,
                                        chunksReused: summary.chunksReused, chunksZero: summary.chunksZero,
                                        bytesStored: summary.bytesStored, seconds: Date().timeIntervalSince(started)),
            diskMap: mapID, group: summary.group)
        try writer.commit(record)
        return record.id
    }

    /// A snapshot by id, unique prefix, or `latest` (newest of `disk`, or of the only disk).
    public static func resolve(_ repository: Repository, _ spec: String, disk: String?) throws -> SnapshotRecord {
        do {
            if spec == "latest" {
                let all = try repository.snapshots()
                let candidates = disk.map { d in all.filter { $0.diskName == d } } ?? all
                if disk == nil && Set(candidates.map(\.diskName)).count > 1 {
                    throw AgentError(.invalidArgument, "the repository holds several disks; say which with --disk")
                }
                guard let last = candidates.last else {
                    throw AgentError(.invalidArgument, "no snapshot\(disk.map { " of disk \($0)" } ?? "") in the repository")
                }
                return last
            }
            let record = try repository.snapshot(matching: spec)
            if let disk, record.diskName != disk {
                throw AgentError(.invalidArgument, "snapshot \(record.id) is of disk \(record.diskName), not \(disk)")
            }
            return record
        } catch let e as RepositoryError {
            throw AgentError(e.code == .damaged ? .damaged : .invalidArgument, e.message, cause: e)
        }
    }

    public static func readMap(_ repository: Repository, _ record: SnapshotRecord) throws -> DiskMap {
        do {
            return try repository.readDiskMap(record.diskMap)
        } catch let e as RepositoryError {
            throw AgentError(.damaged, "snapshot \(record.id): its disk map cannot be read: \(e.message)", cause: e)
        }
    }
}
