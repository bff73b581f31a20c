import Agent
import ArgumentParser
import BackupRepository
import BlockIO
import Foundation

struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "diff", abstract: "The byte ranges that differ between two snapshots.")
    @OptionGroup var repository: RepositoryOptions
    @OptionGroup var lockOptions: ReadLockOptions
    @Argument(help: "The first snapshot.") var a: String
    @Argument(help: "The second snapshot.") var b: String
    @Option(help: "The disk, for 'latest'.") var disk: String?
    @Flag(help: "Print JSON.") var json = false

    struct Range: Codable { var offset: UInt64; var length: UInt64 }

    func run() throws {
        let (ida, idb, ranges) = try reportingErrors(json: json) {
            // Notes go to stderr even with --json: the output is one JSON document.
            try repository.withRepository(reading: lockOptions.locking, logger: CommandLogHandler.logger("tessera.diff", json: false)) { repo in
                try SnapshotDiff.ranges(repo, a, b, disk: disk)
            }
        }
        if json { Output.json(ranges.map { Range(offset: $0.offset, length: $0.length) }); return }
        for r in ranges { print("\(r.offset)\t\(r.length)") }
        print("\(Output.count(ranges.count, "range")), \(Output.bytes(ranges.totalLength)) differ between \(ida) and \(idb)")
    }
}
