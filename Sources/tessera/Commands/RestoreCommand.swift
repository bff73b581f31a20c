import Agent
import ArgumentParser
import BackupRepository
import Foundation
import Workers

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a snapshot to a flat file (sparse, every chunk re-hashed, synced before success).",
        discussion: """
            A new target, or one replaced with --force, is written next to it in a staging folder \
            (.tessera-restore-XXXXXX) and renamed into place only when it is complete and synced: \
            a restore that fails, is cancelled (Ctrl-C) or runs out of space leaves the old target \
            as it was. A restore killed outright (SIGKILL, power loss) leaves only the staging \
            folder, which the next restore into that folder removes. --only-changed updates the \
            target in place: interrupted, it is part old, part new; run it again to finish. A \
            target that a filter serves (a running VM's disk) is refused.
            """)
    @OptionGroup var repository: RepositoryOptions
    @OptionGroup var lockOptions: ReadLockOptions
    @Argument(help: "A snapshot id, a unique prefix, or 'latest' (with --disk).") var snapshot: String
    @Option(help: "The disk, for 'latest'.") var disk: String?
    @Option(help: "The target: a raw file, or a VMDK descriptor path with --format vmdk.") var to: String
    @Option(help: "raw or vmdk (descriptor + flat extent).") var format: String = "raw"
    @Flag(help: "Update an existing disk in place, writing only the chunks that differ.") var onlyChanged = false
    @Flag(help: "Replace an existing non-empty target (only once the restore is complete).") var force = false
    @Flag(help: "Go on past damaged chunks and list their ranges.") var keepGoing = false
    @Flag(help: "Print JSON lines.") var json = false

    func validate() throws {
        if RestoreFormat(rawValue: format) == nil { throw ValidationError("--format is raw or vmdk, not '\(format)'") }
        if onlyChanged && force { throw ValidationError("--only-changed updates the target in place; --force replaces it: give one") }
    }

    func run() throws {
        let format = RestoreFormat(rawValue: format) ?? .raw
        let mode: RestoreTarget.Mode = onlyChanged ? .update : force ? .replace : .create
        var settings = RestoreSettings()
        settings.keepGoing = keepGoing
        let bar = ProgressBar(label: "restore", json: json)
        let signals = JobSignals()
        let keepGoing = self.keepGoing
        let summary = try reportingErrors(json: json, cancelled: { c in
            "restore cancelled by \(c.reason); " + (mode == .update
                ? "\(to) is partly updated: run the same restore again to finish it"
                : "\(to) is as it was")
        }) {
            try repository.withRepository(reading: lockOptions.locking) { repo in
                let record = try RepositoryAccess.resolve(repo, snapshot, disk: disk)
                let map = try RepositoryAccess.readMap(repo, record)
                let target: RestoreTarget
                do {
                    target = try RestoreTarget.prepare(path: to, format: format, size: record.diskSize, mode: mode)
                } catch let e as AgentError where e.code == .targetExists {
                    throw AgentError(.targetExists, e.message + " (--force replaces it, --only-changed updates it)", cause: e)
                }
                for note in target.notes { Output.note(note) }
                do {
                    return try RestoreJob(repository: repo, snapshot: record, map: map, settings: settings,
                                          cancellation: signals.cancellation).run(into: target, progress: { bar.update($0) })
                } catch let e as AgentError where e.code == .damaged && !keepGoing {
                    throw AgentError(.damaged, e.message + "; --keep-going restores the rest (the damaged ranges read as zeroes)", cause: e)
                }
            }
        }
        bar.finish()
        if !summary.damaged.isEmpty {
            Output.note("\(Output.count(summary.damaged.count, "damaged chunk")) not restored; their ranges read as zeroes")
        }
        if json { Output.json(summary) } else {
            print("restored snapshot \(summary.snapshot) of disk \(summary.disk) to \(summary.target) (\(summary.format))")
            print("  size      \(Output.bytes(summary.diskSize))")
            print("  written   \(Output.bytes(summary.bytesWritten)) in \(Output.count(summary.chunksWritten, "chunk")); \(Output.count(summary.chunksZero, "zero chunk")) left as holes; \(summary.chunksUnchanged) unchanged")
            print(String(format: "  time      %.2fs", summary.seconds))
            for d in summary.damaged { print("  DAMAGED   bytes [\(d.offset), \(d.offset + d.length)) chunk \(d.chunk): \(d.error)") }
        }
        if !summary.damaged.isEmpty { throw ExitCode(ExitCodes.failed) }
    }
}
