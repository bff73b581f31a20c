import ArgumentParser
import BackupRepository
import Foundation
import Logging
import Synchronization
import Workers

struct PruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Delete data no snapshot references; rewrite packs that are mostly garbage.",
        discussion: """
            Takes the exclusive lock: it never runs while a backup holds its shared lock (it fails \
            with "locked", exit 11, unless --wait gives it time). It can be killed at any point \
            and run again; it never deletes a chunk a committed snapshot needs. Ctrl-C stops it \
            at the next clean point, with the repository consistent: run prune again to finish.
            Exit codes: 0 ok, 1 failed, 10 no repository, 11 locked, 130 cancelled (SIGINT), 143 (SIGTERM).
            """)
    @OptionGroup var repository: RepositoryOptions
    @Option(help: "Rewrite a pack when at least this percentage of it is garbage.") var repackThreshold: Double = 20
    @Option(help: "Seconds to keep retrying while another process holds the repository.") var wait: Double = 0
    @Flag(help: "Show what would be deleted, delete nothing.") var dryRun = false
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard (0...100).contains(repackThreshold) else { throw ValidationError("--repack-threshold is a percentage from 0 to 100") }
        guard wait >= 0 else { throw ValidationError("--wait is a number of seconds, 0 or more") }
    }

    func run() throws {
        let signals = JobSignals()
        let dryRun = self.dryRun
        let report = try reportingErrors(json: json, cancelled: { Self.cancelled($0, dryRun: dryRun) }) {
            try Self.prune(path: repository.path, threshold: repackThreshold / 100, dryRun: dryRun, wait: wait,
                           cancellation: signals.cancellation, logger: CommandLogHandler.logger("tessera.prune", json: json))
        }
        Self.print(report, json: json)
    }

    /// What a cancelled prune left: a plan never changes anything; a run stops only where the
    /// repository is consistent (as a killed one is), and a rerun finishes the job.
    static func cancelled(_ c: Cancelled, dryRun: Bool) -> String {
        dryRun ? "prune cancelled by \(c.reason); nothing was changed"
            : "prune cancelled by \(c.reason); the repository is consistent, run prune again to finish"
    }

    static func prune(path: String, threshold: Double, dryRun: Bool, wait: Double, cancellation: Cancellation,
                      logger: Logger) throws -> PruneReport {
        let lock = try MaintenanceLock(path: path, kind: .exclusive, wait: wait)
        defer { lock.release() }
        // Lock files of dead processes (a killed backup or prune) go too; nobody else holds a lock now.
        if !dryRun { _ = try? lock.repository.removeStaleLocks() }
        return try Pruner.prune(lock.repository, options: PruneOptions(repackThreshold: threshold, dryRun: dryRun),
                                cancellation: cancellation, logger: logger)
    }

    struct ReportLine: Encodable {
        var report: PruneReport
        func encode(to encoder: any Encoder) throws {
            try report.encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode("prune", forKey: Key(stringValue: "type")!)
            try c.encode(report.bytesFreed, forKey: Key(stringValue: "bytesFreed")!)
        }
    }

    static func print(_ r: PruneReport, json: Bool) {
        if json { printJSONLine(ReportLine(report: r)); return }
        let verb = r.dryRun ? "would free" : "freed"
        Swift.print("\(Output.count(r.snapshots, "snapshot")) \(r.snapshots == 1 ? "references" : "reference") \(Output.count(r.chunksLive, "chunk"))")
        Swift.print("packs: \(r.packsKept) kept, \(r.packsDeleted) deleted, \(r.packsRepacked) rewritten into \(r.packsWritten) (\(Output.count(r.chunksMoved, "chunk")) moved), \(r.packsQuarantined) with damaged chunks moved to quarantine")
        Swift.print("index files: \(r.indexFilesDeleted) replaced by \(r.indexFilesWritten); disk maps deleted: \(r.diskMapsDeleted); map pages deleted: \(r.mapPagesDeleted); leftovers deleted: \(r.leftoversDeleted)")
        Swift.print("\(verb) \(Output.bytes(r.bytesFreed)) (\(Output.bytes(r.bytesBefore)) before) in \(String(format: "%.2f", r.seconds))s")
    }
}

/// A repository opened under a lock that is refreshed in the background (so a long prune
/// or check never looks stale) and released once. A command that only reads may run without
/// a lock (`--no-lock`, or a read-only repository): then `lock` is nil.
final class MaintenanceLock: Sendable {
    let repository: Repository
    let lock: RepositoryLock?
    private let refresher: Ticker?
    private let released = Atomic<Bool>(false)

    /// Opens the repository and takes a `kind` lock, retrying for `wait` seconds.
    convenience init(path: String, kind: LockKind, wait: Double) throws {
        let repository = try Repository.open(at: path)
        self.init(repository, lock: try repository.lock(kind, wait: wait))
    }

    /// Opens the repository and takes the lock of a command that only reads (`logger` is
    /// warned when it goes without one).
    convenience init(path: String, reading locking: ReadLocking, logger: Logger) throws {
        let repository = try Repository.open(at: path)
        self.init(repository, lock: try repository.lockForReading(locking, logger: logger))
    }

    private init(_ repository: Repository, lock: RepositoryLock?) {
        self.repository = repository
        self.lock = lock
        // Every 5 minutes; a lock not refreshed for 30 is stale.
        refresher = lock.map { lock in Ticker(every: 300, name: "tessera-lock-refresh") { try? lock.refresh() } }
    }

    func release() {
        guard !released.exchange(true, ordering: .relaxed) else { return }
        refresher?.stop()
        try? lock?.release()
    }
}
