@testable import Agent
import BackupRepository
import BlockIO
import Foundation
import Logging
import Synchronization
import Testing
import TestSupport
import Workers

/// The stores the agent's in-process jobs run against (as the repository suites do, see
/// `StoreKind` there): jobs receive an open repository and never ask what is under it.
enum AgentStore: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case local, memory

    var testDescription: String { rawValue }

    /// A new repository; keep `folder` alive for the whole test (a local store lives in it).
    func makeRepository(_ folder: TemporaryDirectory) throws -> (store: any ObjectStore, repository: Repository) {
        let store: any ObjectStore
        switch self {
        case .local:
            _ = try Repository.initialize(at: folder.file("repo"))
            store = LocalObjectStore(root: folder.file("repo"))
        case .memory:
            store = MemoryObjectStore()
            _ = try Repository.initialize(store: store)
        }
        return (store, try Repository.open(store: store))
    }
}

/// A scan source whose reader cancels the job after `after` reads: a Ctrl-C in the middle
/// of the pipeline, at a point the test chooses.
struct CancellingSource: ChangeSource {
    let base: ScanChangeSource
    let cancellation: Cancellation
    let after: Int

    func begin(base backup: BackupBase?, chunkSize: Int, fullRead: Bool, logger: Logger) throws -> any ChangeSession {
        let session = try base.begin(base: backup, chunkSize: chunkSize, fullRead: fullRead, logger: logger)
        return FixedSession(reader: CancellingReader(base: session.reader, cancellation: cancellation, after: after),
                            kind: session.kind, changes: session.changes)
    }
}

final class CancellingReader: DiskSource {
    let base: any DiskSource
    let cancellation: Cancellation
    let after: Int
    private let reads = Atomic<Int>(0)

    init(base: any DiskSource, cancellation: Cancellation, after: Int) {
        self.base = base
        self.cancellation = cancellation
        self.after = after
    }

    var size: UInt64 { base.size }
    var description: String { base.description }
    var allowsConcurrentReads: Bool { base.allowsConcurrentReads }
    func dataRanges(in range: ByteRange) throws -> [ByteRange] { try base.dataRanges(in: range) }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        if reads.add(1, ordering: .relaxed).newValue == after { cancellation.cancel(reason: "SIGINT") }
        try base.read(into: buffer, at: offset)
    }
}

/// Backup and restore jobs run in-process on every store: a scan, an incremental scan that
/// stores only what changed, a restore byte-identical to the disk, a cancelled backup that
/// leaves no snapshot, nothing half-written and a repository that checks clean.
struct InProcessJobTests {
    static let logger = Logger(label: "test")

    /// A 24 MiB sparse raw disk with 3 MiB of seeded data in two places.
    static func makeDisk(_ path: String, rng: inout SeededGenerator) throws -> BlockFile {
        let f = try BlockFile(path: path, mode: .createReadWrite)
        try f.truncate(to: 24 << 20)
        try f.write(rng.bytes(2 << 20), at: 3 << 20)
        try f.write(rng.bytes(1 << 20), at: 17 << 20)
        return f
    }

    func backup(_ repo: Repository, _ source: any ChangeSource, cancellation: Cancellation? = nil) throws -> BackupSummary {
        let lock = try RepositoryAccess.lock(repo, .shared)
        defer { lock.release() }
        var settings = BackupSettings(disk: "d")
        settings.workers = 2
        return try BackupJob(repository: repo, source: source, settings: settings, logger: Self.logger, cancellation: cancellation).run()
    }

    @Test(arguments: AgentStore.allCases)
    func scanThenIncrementalThenRestoreIsByteIdentical(_ kind: AgentStore) throws {
        let dir = try TemporaryDirectory("inprocess")
        let (store, repo) = try kind.makeRepository(dir)
        var rng = SeededGenerator(seed: 31)
        let diskPath = dir.file("disk.raw")
        let disk = try Self.makeDisk(diskPath, rng: &rng)
        let first = try backup(repo, ScanChangeSource(path: diskPath))
        #expect(first.chunksNew == 48 && first.bytesRead < 4 << 20, "holes are not read: \(first)")
        try disk.write(rng.bytes(4096), at: (17 << 20) + 70_000)
        let second = try backup(try Repository.open(store: store), ScanChangeSource(path: diskPath))
        #expect(second.chunksNew == 1 && second.chunksReused == 47)

        // Restore the newest through a fresh open (another process), into a new file.
        let reader = try Repository.open(store: store)
        let record = try RepositoryAccess.resolve(reader, "latest", disk: "d")
        #expect(record.id == second.snapshot)
        let out = dir.file("out.raw")
        let target = try RestoreTarget.prepare(path: out, format: .raw, size: record.diskSize, mode: .create)
        let restored = try RestoreJob(repository: reader, snapshot: record, map: try RepositoryAccess.readMap(reader, record)).run(into: target)
        #expect(restored.diskSize == 24 << 20)
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(contentsOf: URL(fileURLWithPath: diskPath)))
        let report = try RepositoryChecker.check(try Repository.open(store: store), options: CheckOptions(readData: .all))
        #expect(report.isClean, "\(report.findings)")
        #expect(try reader.locks().isEmpty)
    }

    @Test(arguments: AgentStore.allCases)
    func aBackupCancelledMidwayLeavesNoSnapshotNoLeftoversAndChecksClean(_ kind: AgentStore) throws {
        let dir = try TemporaryDirectory("inprocess-cancel")
        let (store, repo) = try kind.makeRepository(dir)
        var rng = SeededGenerator(seed: 32)
        let diskPath = dir.file("disk.raw")
        _ = try Self.makeDisk(diskPath, rng: &rng)
        let kept = try backup(repo, ScanChangeSource(path: diskPath))
        _ = try Self.makeDisk(diskPath, rng: &rng) // new data everywhere: the next backup must write packs

        let cancellation = Cancellation()
        let source = CancellingSource(base: ScanChangeSource(path: diskPath), cancellation: cancellation, after: 1)
        let e = #expect(throws: Cancelled.self) { _ = try backup(try Repository.open(store: store), source, cancellation: cancellation) }
        #expect(e?.reason == "SIGINT")

        let after = try Repository.open(store: store)
        #expect(try after.snapshots().map(\.id) == [kept.snapshot])
        #expect(try after.locks().isEmpty)
        #expect(try store.leftovers().isEmpty)
        let report = try RepositoryChecker.check(after, options: CheckOptions(readData: .all))
        #expect(report.isClean, "\(report.findings)")
        // The next backup runs as if nothing happened.
        _ = try backup(after, ScanChangeSource(path: diskPath))
        #expect(try Repository.open(store: store).snapshots().count == 2)
    }
}

/// A scan whose session cannot be told that its snapshot was committed (the filter died
/// between the snapshot record and RELEASE).
struct UnreleasableSource: ChangeSource {
    let base: ScanChangeSource

    struct Session: ChangeSession {
        let inner: any ChangeSession
        var reader: any DiskSource { inner.reader }
        var kind: ChangeSourceKind { inner.kind }
        var changeID: String? { "G/2" }
        var group: String? { nil }
        var changes: ChangeSet { inner.changes }
        func commit() throws {
            throw AgentError(.filter, "releasing checkpoint G/2 of disk d failed: cannot reach the filter's control endpoint")
        }
        func abort() {}
    }

    func begin(base backup: BackupBase?, chunkSize: Int, fullRead: Bool, logger: Logger) throws -> any ChangeSession {
        Session(inner: try base.begin(base: backup, chunkSize: chunkSize, fullRead: fullRead, logger: logger))
    }
}

extension InProcessJobTests {
    /// Found by Tools/torture: a backup whose snapshot is committed is a success even if the
    /// source cannot be released afterwards (it exited 1 and scripts counted a saved snapshot
    /// as a failure). The summary says what happened; the snapshot restores.
    @Test func aSnapshotSavedBeforeTheReleaseFailedIsASuccessWithAWarning() throws {
        let dir = try TemporaryDirectory("inprocess-unreleased")
        let (store, repo) = try AgentStore.local.makeRepository(dir)
        var rng = SeededGenerator(seed: 33)
        let diskPath = dir.file("disk.raw")
        _ = try Self.makeDisk(diskPath, rng: &rng)
        let summary = try backup(repo, UnreleasableSource(base: ScanChangeSource(path: diskPath)))
        #expect(summary.warnings.count == 1 && summary.warnings[0].contains("snapshot \(summary.snapshot) is saved"))
        #expect(summary.warnings[0].contains("cannot reach the filter's control endpoint"))
        let reader = try Repository.open(store: store)
        let record = try RepositoryAccess.resolve(reader, "latest", disk: "d")
        #expect(record.id == summary.snapshot && record.changeID == "G/2")
        let out = dir.file("out.raw")
        let target = try RestoreTarget.prepare(path: out, format: .raw, size: record.diskSize, mode: .create)
        _ = try RestoreJob(repository: reader, snapshot: record, map: try RepositoryAccess.readMap(reader, record)).run(into: target)
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == Data(contentsOf: URL(fileURLWithPath: diskPath)))
    }
}
