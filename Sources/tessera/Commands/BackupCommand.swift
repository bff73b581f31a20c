import Agent
import ArgumentParser
import BlockIO
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
    @Option(help: "A tag to attach to the snapshot (repeatable).") var tag: [String] = []
    @Flag(help: "Print JSON lines; the last is {\"type\":\"summary\", ...}.") var json = false

    func run() throws {
        var options = BackupOptions(repositoryPath: repository.path, disk: disk)
        options.filterControl = filter
        options.sourcePath = source
        options.nbdURI = nbd
        options.bitmap = bitmap
        options.forceFull = full
        options.tags = tag
        let bar = ProgressBar(label: "backup \(disk)", json: json)
        let json = self.json
        let summary = try reportingErrors(json: json) {
            let job = try BackupJob(options: options)
            return try job.run(log: { message in
                // A full read's reason is in the summary too; say the rest as it happens.
                if json { Output.json(["type": "note", "message": message]) } else if !message.hasPrefix("full read:") { Output.error(message) }
            }, progress: { bar.update($0) })
        }
        bar.finish()
        if json { Output.json(summary); return }
        print("snapshot \(summary.snapshot) of disk \(summary.disk) saved (\(summary.mode.rawValue))")
        if let reason = summary.fullReason { print("  full read because \(reason)") }
        if let c = summary.changeID { print("  change ID      \(c)") }
        print("  read           \(Output.bytes(summary.bytesRead)) of \(Output.bytes(summary.diskSize))")
        print("  chunks         \(summary.chunksNew) new, \(summary.chunksReused) reused, \(summary.chunksZero) zero, \(summary.chunksCarried) carried over")
        print("  stored         \(Output.bytes(summary.bytesStored))")
        print(String(format: "  time           %.2fs", summary.seconds))
    }
}
