import Agent
import BackupRepository
import ArgumentParser
import BlockIO
import Logging
import Workers
import Foundation

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Back up one disk: only what changed is read, every snapshot is a synthetic full.",
        discussion: """
            Sources of change, best first: --filter (Tessera's own tracker), --nbd with --bitmap \
            (a qemu:dirty-bitmap: context, as QEMU/libvirt pull-mode backups export), or --source \
            alone (a full scan that skips holes and stores only new chunks). When an incremental is \
            not possible the backup reads everything and says why (full_reason).
            Exit codes: 0 ok, 1 failed, 10 no repository, 11 repository locked.
            """)
    @OptionGroup var repository: RepositoryOptions
    @Option(help: "The disk's name (as attached to the filter).") var disk: String
    @Option(help: "The filter's control socket: checkpoint, read the changes, release.") var filter: String?
    @Option(help: "The flat file or VMDK descriptor to read (default: what the filter reports).") var source: String?
    @Option(help: "An NBD URI to read from (nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT).") var nbd: String?
    @Option(help: "The dirty bitmap to use with --nbd (NAME or qemu:dirty-bitmap:NAME).") var bitmap: String?
    @Flag(help: "Read the whole disk even if an incremental is possible.") var full = false
    @Flag(help: "With --filter: hold the checkpoint for the whole backup instead of reading the live disk in passes first and checkpointing only the last small delta.")
    var noConverge = false
    @Option(help: "A tag to attach to the snapshot (repeatable).") var tag: [String] = []
    @Flag(help: "Print JSON lines; the last is {\"type\":\"summary\", ...}.") var json = false

    func validate() throws {
        if filter != nil && nbd != nil {
            throw ValidationError("--filter and --nbd are two different sources of changes; give one")
        }
        if filter == nil && nbd == nil && source == nil {
            throw ValidationError("say where to read disk \(disk) from: --filter CONTROL_SOCKET, --nbd URI or --source PATH")
        }
        if bitmap != nil && nbd == nil { throw ValidationError("--bitmap names a dirty bitmap of the --nbd export; give --nbd too") }
        if nbd != nil && source != nil { throw ValidationError("--nbd reads the export itself; --source is for --filter or a scan") }
    }

    func run() throws {
        let changes: any ChangeSource = if let filter {
            FilterChangeSource(control: filter, disk: disk, sourcePath: source)
        } else if let nbd {
            NBDBitmapChangeSource(uri: nbd, bitmap: bitmap)
        } else {
            ScanChangeSource(path: source ?? "")
        }
        var settings = BackupSettings(disk: disk)
        settings.tags = tag
        settings.fullRead = full
        if noConverge { settings.convergence = nil }
        let bar = ProgressBar(label: "backup \(disk)", json: json)
        let signals = JobSignals()
        let logger = CommandLogHandler.logger("tessera.backup", json: json)
        let (disk, filter) = (self.disk, self.filter)
        let summary = try reportingErrors(json: json, cancelled: { c in
            "backup of disk \(disk) cancelled by \(c.reason); \(filter == nil ? "" : "checkpoint aborted, nothing lost; ")no snapshot saved"
        }) {
            try repository.withRepository(lock: .shared) { repo in
                do {
                    return try BackupJob(repository: repo, source: changes, settings: settings, logger: logger,
                                         cancellation: signals.cancellation).run(progress: { bar.update($0) })
                } catch let e as AgentError where e.code == .noBitmap {
                    throw AgentError(.noBitmap, e.message + " (--bitmap NAME), or back up with --full", cause: e)
                }
            }
        }
        bar.finish()
        if json { Output.json(summary); return }
        print("snapshot \(summary.snapshot) of disk \(summary.disk) saved (\(summary.mode.rawValue))")
        if let reason = summary.fullReason { print("  full read because \(reason)") }
        for warning in summary.warnings { print("  warning        \(warning)") }
        if let c = summary.changeID { print("  change ID      \(c)") }
        if !summary.passes.isEmpty {
            let passes = summary.passes.map { String(format: "%@ in %.2fs", Output.bytes($0.bytes), $0.seconds) }.joined(separator: ", ")
            print("  passes         \(passes) (live, before the checkpoint; \(summary.convergence ?? ""))")
        }
        if let held = summary.checkpointSeconds {
            print(String(format: "  checkpoint     held %.2fs, overlay %@", held, Output.bytes(summary.overlayBytes ?? 0)))
        }
        print("  read           \(Output.bytes(summary.bytesRead)) of \(Output.bytes(summary.diskSize))")
        print("  chunks         \(summary.chunksNew) new, \(summary.chunksReused) reused, \(summary.chunksZero) zero, \(summary.chunksCarried) carried over")
        print("  stored         \(Output.bytes(summary.bytesStored))")
        print(String(format: "  time           %.2fs", summary.seconds))
    }
}
