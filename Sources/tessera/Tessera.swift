import ArgumentParser

/// `tessera`: the command people run. It parses, builds the library objects and calls them;
/// the logic lives in the libraries.
@main
struct Tessera: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Incremental, deduplicating backups of virtual disks stored as flat files.",
        discussion: """
            A filter in the disk's write path tracks changed blocks; backups read only what \
            changed and store every night as a synthetic full in a content-addressed repository.
            """,
        version: "0.1.0",
        subcommands: [InitCommand.self, SnapshotsCommand.self, BackupCommand.self, RestoreCommand.self,
                      DiffCommand.self, ServeCommand.self, FilterCommand.self, CheckCommand.self, ForgetCommand.self, PruneCommand.self, RepairCommand.self, UnlockCommand.self]
    )
}
