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

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a snapshot to a flat file (sparse, every chunk re-hashed, synced before success).")
    @OptionGroup var repository: RepositoryOptions
    @Argument(help: "A snapshot id, a unique prefix, or 'latest' (with --disk).") var snapshot: String
    @Option(help: "The disk, for 'latest'.") var disk: String?
    @Option(help: "The target: a raw file, or a VMDK descriptor path with --format vmdk.") var to: String
    @Option(help: "raw or vmdk (descriptor + flat extent).") var format: String = "raw"
    @Flag(help: "Update an existing disk, writing only the chunks that differ.") var onlyChanged = false
    @Flag(help: "Overwrite an existing non-empty target.") var force = false
    @Flag(help: "Go on past damaged chunks and list their ranges.") var keepGoing = false
    @OptionGroup var lockOptions: ReadLockOptions
    @Flag(help: "Print JSON lines.") var json = false

    func run() throws {
        guard let fmt = RestoreFormat(rawValue: format) else {
            throw ValidationError("--format is raw or vmdk")
        }
        var options = RestoreOptions(repositoryPath: repository.path, snapshot: snapshot, target: to)
        options.disk = disk
        options.format = fmt
        options.onlyChanged = onlyChanged
        options.force = force
        options.keepGoing = keepGoing
        options.locking = lockOptions.locking
        let bar = ProgressBar(label: "restore", json: json)
        let json = self.json
        let summary = try reportingErrors(json: json) {
            try RestoreJob(options: options).run(log: { Output.error($0) }, progress: { bar.update($0) })
        }
        bar.finish()
        if json { Output.json(summary) } else {
            print("restored snapshot \(summary.snapshot) of disk \(summary.disk) to \(summary.target) (\(summary.format))")
            print("  size      \(Output.bytes(summary.diskSize))")
            print("  written   \(Output.bytes(summary.bytesWritten)) in \(summary.chunksWritten) chunks; \(summary.chunksZero) zero chunks left as holes; \(summary.chunksUnchanged) unchanged")
            print(String(format: "  time      %.2fs", summary.seconds))
            for d in summary.damaged { print("  DAMAGED   bytes [\(d.offset), \(d.offset + d.length)) chunk \(d.chunk): \(d.error)") }
        }
        if !summary.damaged.isEmpty { throw ExitCode(ExitCodes.failed) }
    }
}

struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "diff", abstract: "The byte ranges that differ between two snapshots.")
    @OptionGroup var repository: RepositoryOptions
    @Argument(help: "The first snapshot.") var a: String
    @Argument(help: "The second snapshot.") var b: String
    @Option(help: "The disk, for 'latest'.") var disk: String?
    @OptionGroup var lockOptions: ReadLockOptions
    @Flag(help: "Print JSON.") var json = false

    struct Range: Codable { var offset: UInt64; var length: UInt64 }

    func run() throws {
        let (ida, idb, ranges) = try reportingErrors(json: json) {
            try SnapshotDiff.ranges(repositoryPath: repository.path, a, b, disk: disk, locking: lockOptions.locking,
                                    warn: { Output.error($0) })
        }
        if json { Output.json(ranges.map { Range(offset: $0.offset, length: $0.length) }); return }
        for r in ranges { print("\(r.offset)\t\(r.length)") }
        print("\(ranges.count) ranges, \(Output.bytes(ranges.totalLength)) differ between \(ida) and \(idb)")
    }
}
