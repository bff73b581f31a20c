import ArgumentParser
import Foundation

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
                      DiffCommand.self, ServeCommand.self, FilterCommand.self, CheckCommand.self, ForgetCommand.self, PruneCommand.self, RepairCommand.self, UnlockCommand.self,
                      RunCommand.self, ConfigCommand.self, ThawGuardCommand.self]
    )

    /// Parses and runs a command; every error a command or the parser raises comes out
    /// through one funnel: `tessera: error: MESSAGE` and the documented exit code (64 for a
    /// command line that is wrong). Help and --version print as usual.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            guard code != .success, !(error is ExitCode) else { exit(withError: error) }
            var text = message(for: error)
            for prefix in ["Error: ", "error: "] where text.hasPrefix(prefix) { text = String(text.dropFirst(prefix.count)) }
            Output.error(text + (code.rawValue == ExitCodes.usage ? " (see tessera --help)" : ""))
            Foundation.exit(code.rawValue)
        }
    }
}

