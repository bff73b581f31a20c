import ArgumentParser
import BackupRepository
import BlockIO
import Foundation
import Workers

struct RepairCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repair",
        abstract: "Rebuild the index from the packs, or list (and forget) snapshots that cannot be restored whole.",
        subcommands: [RepairIndex.self, RepairSnapshots.self])

    struct RepairIndex: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "index",
            abstract: "Rebuild the index from the packs alone (exclusive lock).",
            discussion: "Every chunk whose envelope verifies is indexed; a pack with a damaged trailer is walked envelope by envelope. The new index is durable before the old index files are deleted. Ctrl-C while the packs are read changes nothing (exit 130).")
        @OptionGroup var repository: RepositoryOptions
        @Option(help: "Seconds to keep retrying while another process holds the repository.") var wait: Double = 0
        @Flag(help: "Print the report as JSON.") var json = false

        func validate() throws {
            guard wait >= 0 else { throw ValidationError("--wait is a number of seconds, 0 or more") }
        }

        func run() throws {
            let signals = JobSignals()
            let logger = CommandLogHandler.logger("tessera.repair", json: json)
            let report = try reportingErrors(json: json, cancelled: { "repair index cancelled by \($0.reason); nothing was changed" }) {
                let lock = try MaintenanceLock(path: repository.path, kind: .exclusive, wait: wait)
                defer { lock.release() }
                return try RepositoryRepair.rebuildIndex(lock.repository, cancellation: signals.cancellation, logger: logger)
            }
            if json { printJSONLine(report); return }
            print("indexed \(Output.count(report.chunksIndexed, "chunk")) from \(Output.count(report.packs, "pack")) (\(report.packsWalked) walked past a damaged trailer, \(Output.count(report.chunksSkipped, "damaged copy", "damaged copies")) left out)")
            print("wrote \(Output.count(report.indexFilesWritten, "index file")), deleted \(Output.count(report.indexFilesDeleted, "old one"))")
        }
    }

    struct RepairSnapshots: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "snapshots",
            abstract: "List snapshots that cannot be restored whole and the ranges they lost; --forget deletes them.",
            discussion: "Run `tessera check --read-data` first so damaged chunks are known. Without --forget nothing is deleted. Exit 1 when any snapshot is damaged and was not forgotten.")
        @OptionGroup var repository: RepositoryOptions
        @Flag(help: "Delete the records of those snapshots (their data goes with prune).") var forget = false
        @Option(help: "Seconds to keep retrying while another process holds the repository.") var wait: Double = 0
        @Flag(help: "Print JSON lines: one per damaged snapshot, then a summary.") var json = false

        struct Line: Encodable {
            var type = "damaged-snapshot"
            var snapshot: String, disk: String, lost: [Range], whole: Bool, causes: [String]
        }
        struct Range: Encodable { var offset: UInt64; var length: UInt64 }
        struct Summary: Encodable { var type = "summary"; var damaged: Int; var forgotten: Int }

        func validate() throws {
            guard wait >= 0 else { throw ValidationError("--wait is a number of seconds, 0 or more") }
        }

        func run() throws {
            let signals = JobSignals()
            let damaged = try reportingErrors(json: json, cancelled: { "repair snapshots cancelled by \($0.reason); nothing was changed" }) {
                let lock = try MaintenanceLock(path: repository.path, kind: forget ? .exclusive : .shared, wait: wait)
                defer { lock.release() }
                return try RepositoryRepair.damagedSnapshots(lock.repository, forget: forget, cancellation: signals.cancellation)
            }
            if json {
                for d in damaged {
                    printJSONLine(Line(snapshot: d.snapshot, disk: d.disk, lost: d.lost.map { Range(offset: $0.offset, length: $0.length) },
                                     whole: d.lost.isEmpty, causes: d.causes))
                }
                printJSONLine(Summary(damaged: damaged.count, forgotten: forget ? damaged.count : 0))
            } else {
                for d in damaged {
                    let what = d.lost.isEmpty ? "the whole snapshot" : "\(Output.bytes(d.lost.totalLength)) in \(Output.count(d.lost.count, "range")): "
                        + d.lost.prefix(8).map(\.description).joined(separator: " ")
                    print("snapshot \(d.snapshot) (disk \(d.disk)) lost \(what)\(forget ? " — forgotten" : "")")
                    for c in d.causes.prefix(4) { print("  because \(c)") }
                }
                print(damaged.isEmpty ? "every snapshot can be restored whole"
                      : "\(Output.count(damaged.count, "snapshot")) cannot be restored whole\(forget ? "; forgotten (run `tessera prune` to free their data)" : "; `--forget` deletes them")")
            }
            if !damaged.isEmpty && !forget { throw ExitCode(ExitCodes.failed) }
        }
    }
}
