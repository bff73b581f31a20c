import ArgumentParser
import Filter
import Foundation
import TrackerControl

struct FilterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "filter",
        abstract: "The write-path filter: serve disks over NBD while tracking changed blocks, and drive it.",
        subcommands: [FilterServe.self, FilterStatus.self, FilterCheckpoint.self, FilterChanges.self,
                      FilterRelease.self, FilterReset.self, FilterAttach.self, FilterDetach.self]
    )
}

/// The options every control subcommand shares.
struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: "The filter's control socket (as given to `tessera filter serve --control`).")
    var control: String

    @Flag(name: .long, help: "Print JSON instead of text.")
    var json = false
}

/// Runs a control request, turning a filter error into a message and exit code 1.
func withControl<T>(_ options: ControlOptions, _ body: (ControlClient) throws -> T) throws -> T {
    do {
        let client = try ControlClient(path: options.control)
        return try body(client)
    } catch let e as FilterError {
        Output.error(e.message)
        throw ExitCode(e.code == .unreachable ? 2 : 1)
    }
}

/// `path` resolved against this process's working directory.
func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

func printStatus(_ s: DiskStatus) {
    print("disk \(s.name)")
    print("  path         \(s.path)")
    if s.files != [s.path] { print("  files        \(s.files.joined(separator: ", "))") }
    print("  size         \(s.size) bytes (\(Output.bytes(s.size)))")
    print("  granularity  \(Output.bytes(s.granularity))")
    print("  generation   \(s.generation)")
    print("  change ID    \(s.changeID)")
    if let c = s.lastCommitted { print("  committed    \(c)") }
    if let c = s.checkpoint {
        print("  checkpoint   \(c.changeID), open for \(Output.duration(c.ageSeconds))\(s.merging ? ", releasing" : "")")
        if let owner = c.owner { print("  held by      \(owner.holderDescription)") }
        if let readers = c.readers, readers > 0 { print("  readers      \(readers) connected to \(s.name)@checkpoint") }
        if let stale = c.stale { print("  stale        \(stale); the next backup releases it with abort") }
        print("  overlay      \(s.overlayBlocks) blocks, \(Output.bytes(s.overlayBytes))")
    } else {
        print("  checkpoint   none")
    }
    for note in s.notes { print("  note         \(note)") }
}

struct FilterStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show each disk's tracking state and open checkpoint.")
    @OptionGroup var options: ControlOptions
    @Option(help: "Only this disk.") var disk: String?

    func run() throws {
        let list = try withControl(options) { try $0.status(disk: disk) }
        if options.json { Output.json(list); return }
        if list.isEmpty { print("no disks attached") }
        for s in list { printStatus(s) }
    }
}

struct FilterCheckpoint: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Close the disk's epoch and freeze its flat file; new writes go to an overlay until release.",
        discussion: """
            For pull-mode backup tools: read NAME@checkpoint over NBD, then release. Several \
            --disk take one checkpoint of all of them at one instant (a VM's consistency group): \
            no write to any of them is ordered between the checkpoints. The checkpoint belongs \
            to --owner-pid while that process lives, or else to a lease of --lease; while the \
            owner lives, the lease runs or a reader is connected to NAME@checkpoint, `tessera \
            backup` leaves the checkpoint alone. After that a backup may release it with abort \
            (nothing is lost) and take its own.
            """)
    @OptionGroup var options: ControlOptions
    @Option(help: "The disk (repeat it for a group checkpoint of several disks).") var disk: [String]
    @Option(help: "A name for a group checkpoint (default: a new UUID).") var group: String?
    @Option(help: "How long the checkpoint is held for when no --owner-pid is given (90s, 30m, 2h, 1d).")
    var lease: Seconds = Seconds(3600)
    @Option(help: "The process that holds the checkpoint (for example the script's own $$).")
    var ownerPid: Int32?

    func validate() throws {
        if disk.isEmpty { throw ValidationError("give the disk to checkpoint: --disk NAME (several for a group)") }
        if let ownerPid, ownerPid <= 0 { throw ValidationError("--owner-pid takes a process ID, not \(ownerPid)") }
        if lease.seconds <= 0 { throw ValidationError("--lease must be longer than 0 seconds") }
        if group != nil && disk.count == 1 { throw ValidationError("--group names a checkpoint of several disks; give --disk more than once") }
    }

    func run() throws {
        let owner = ownerPid.map { CheckpointOwner(pid: $0) } ?? .lease(seconds: lease.seconds)
        let replies: [ControlProtocol.CheckpointReply] = try withControl(options) { client in
            if disk.count == 1 { return [try client.checkpoint(disk: disk[0], owner: owner)] }
            return try client.checkpointGroup(disks: disk, owner: owner, group: group).checkpoints
        }
        if options.json {
            if disk.count == 1 { Output.json(replies[0]) } else { Output.json(replies) }
            return
        }
        for r in replies {
            print("checkpoint \(r.changeID) on disk \(r.disk)\(r.group.map { " (group \($0))" } ?? "")")
            if let p = r.previous { print("previous   \(p)") }
            print("frozen     \(r.files.joined(separator: ", "))")
            print("export     \(r.disk)@\(ChangeID(r.changeID)?.sequence ?? 0) (read-only; also \(r.disk)@checkpoint while it is open)")
        }
        print("held by    \(owner.holderDescription)")
        print("read, then: " + disk.map { "tessera filter release --control \(options.control) --disk \($0) [--abort]" }.joined(separator: "; "))
    }
}

struct FilterChanges: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "changes",
        abstract: "List the byte ranges changed since a change ID (up to the open checkpoint).")
    @OptionGroup var options: ControlOptions
    @Option(help: "The disk.") var disk: String
    @Option(help: "A change ID (UUID/SEQUENCE) from an earlier checkpoint.") var since: String

    func run() throws {
        let extents = try withControl(options) { try $0.allChanges(disk: disk, since: since) }
        if options.json { Output.json(extents); return }
        var total: UInt64 = 0
        for e in extents {
            print("\(e.offset)\t\(e.length)\t\(e.zero ? "zero" : "data")")
            total += e.length
        }
        print("\(Output.count(extents.count, "extent")), \(total) bytes (\(Output.bytes(total))) changed since \(since)")
    }
}

struct FilterRelease: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "release",
        abstract: "Merge the overlay back and close the checkpoint (commit, or --abort after a failed backup: no change is lost either way).")
    @OptionGroup var options: ControlOptions
    @Option(help: "The disk.") var disk: String
    @Flag(help: "The backup failed or was abandoned.") var abort = false

    func run() throws {
        let s = try withControl(options) { try $0.release(disk: disk, commit: !abort) }
        if options.json { Output.json(s); return }
        print("released checkpoint on disk \(disk) (\(abort ? "abort" : "commit")); change ID now \(s.changeID)")
    }
}

struct FilterReset: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset",
        abstract: "Start a new generation: every earlier change ID becomes unanswerable and the next backup reads everything.")
    @OptionGroup var options: ControlOptions
    @Option(help: "The disk.") var disk: String

    func run() throws {
        let s = try withControl(options) { try $0.reset(disk: disk, reason: "reset by the operator") }
        if options.json { Output.json(s); return }
        print("disk \(disk): new generation \(s.generation), change ID \(s.changeID)")
    }
}

struct FilterAttach: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "attach", abstract: "Attach a disk to a running filter.")
    @OptionGroup var options: ControlOptions
    @Option(help: "The disk's name.") var disk: String
    @Option(help: "A raw flat file or a VMDK descriptor with flat extents.") var path: String

    func run() throws {
        // The filter runs in its own working directory: resolve the path here.
        let s = try withControl(options) { try $0.attach(disk: disk, path: absolutePath(path)) }
        if options.json { Output.json(s); return }
        printStatus(s)
    }
}

struct FilterDetach: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "detach", abstract: "Stop serving and tracking a disk (its state is kept).")
    @OptionGroup var options: ControlOptions
    @Option(help: "The disk.") var disk: String

    func run() throws {
        try withControl(options) { try $0.detach(disk: disk) }
        if !options.json { print("detached \(disk)") }
    }
}
