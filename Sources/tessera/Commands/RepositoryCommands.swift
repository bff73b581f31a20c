import ArgumentParser
import BackupRepository
import Foundation

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Create a repository.")
    @OptionGroup var repository: RepositoryOptions
    @Option(help: "Chunk size: a power of two from 4K to 4M (default 64K, the tracker's granularity).")
    var chunkSize: ByteCount = ByteCount(bytes: 65536)
    // Level 1 by default (as PBS): on 64 KiB chunks it compresses nearly as well as level 3
    // over the whole image and costs far less CPU on the backup's critical path.
    @Option(help: "Compression, as zstd:LEVEL (default zstd:1; higher levels trade backup CPU for space).")
    var compression: String = "zstd:1"

    /// The zstd level `--compression` names, or nil when it is not zstd:1 ... zstd:19.
    var compressionLevel: Int? {
        let parts = compression.split(separator: ":")
        guard parts.count == 2, parts[0] == "zstd", let level = Int(parts[1]), (1...19).contains(level) else { return nil }
        return level
    }

    func validate() throws {
        guard chunkSize.bytes <= Int.max, DiskMap.isValidChunkSize(Int(chunkSize.bytes)) else {
            throw ValidationError("--chunk-size must be a power of two from 4K to 4M (64K is the default), not \(chunkSize)")
        }
        if compressionLevel == nil {
            throw ValidationError("--compression takes zstd:LEVEL with LEVEL from 1 to 19, e.g. zstd:3, not '\(compression)'")
        }
    }

    func run() throws {
        let level = compressionLevel ?? 1
        let repo = try reportingErrors {
            try Repository.initialize(at: repository.path, chunkSize: Int(chunkSize.bytes), compressionLevel: level)
        }
        print("created repository \(repo.config.id) at \(repository.path) (chunk size \(chunkSize), zstd level \(level))")
    }
}

struct SnapshotsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "snapshots", abstract: "List the snapshots in a repository.")
    @OptionGroup var repository: RepositoryOptions
    @Option(help: "Only snapshots of this disk.") var disk: String?
    @Option(help: "Only snapshots of this consistency group (the disks of a VM taken at one instant).") var group: String?
    @Flag(help: "Print JSON.") var json = false

    struct Row: Codable {
        var id: String, disk: String, time: String, size: UInt64, changeID: String?, parent: String?, source: String
        var bytesNew: UInt64, tags: [String], group: String?
        enum CodingKeys: String, CodingKey {
            case id, disk, time, size, parent, source, tags, group
            case changeID = "change_id", bytesNew = "bytes_new"
        }
    }

    func run() throws {
        let rows: [Row] = try reportingErrors(json: json) {
            let repo = try Repository.open(at: repository.path)
            let formatter = ISO8601DateFormatter()
            return try repo.snapshots().filter { (disk == nil || $0.diskName == disk) && (group == nil || $0.group == group) }.map {
                Row(id: $0.id, disk: $0.diskName, time: formatter.string(from: $0.time), size: $0.diskSize,
                    changeID: $0.changeID, parent: $0.parent, source: $0.source.rawValue,
                    bytesNew: $0.stats.bytesStored, tags: $0.tags, group: $0.group)
            }
        }
        if json { Output.json(rows); return }
        // The group column only when some snapshot belongs to a group.
        let grouped = rows.contains { $0.group != nil }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
        print("ID        DISK          TIME                  SIZE        SOURCE      NEW         " + (grouped ? pad("GROUP", 10) : "") + "CHANGE ID")
        for r in rows {
            print(pad(String(r.id.prefix(8)), 10) + pad(r.disk, 14) + pad(r.time, 22) + pad(Output.bytes(r.size), 12)
                  + pad(r.source, 12) + pad(Output.bytes(r.bytesNew), 12) + (grouped ? pad(r.group.map { String($0.prefix(8)) } ?? "-", 10) : "")
                  + (r.changeID ?? "-"))
        }
        print(Output.count(rows.count, "snapshot"))
    }
}

struct UnlockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unlock",
        abstract: "Remove locks left by processes that are gone.",
        discussion: """
            Without options, removes stale locks only: a process on this host that no longer \
            runs, or a lock not refreshed for 30 minutes (a live backup refreshes its lock every \
            5 minutes). --remove-all removes every lock; use it only when you know no tessera \
            process (on any host) uses the repository.
            """)
    @OptionGroup var repository: RepositoryOptions
    @Flag(help: "Remove every lock, stale or not.") var removeAll = false

    func run() throws {
        let removed = try reportingErrors { () -> [LockInfo] in
            let repo = try Repository.open(at: repository.path)
            if !removeAll { return try repo.removeStaleLocks() }
            let all = try repo.locks()
            for l in all { try repo.store.delete(ObjectKey(.lock, l.id)) }
            try repo.store.syncPendingDirectories()
            return all
        }
        for l in removed { print("removed \(l.summary)") }
        print(removed.isEmpty ? "no lock to remove" : "\(removed.count) lock\(removed.count == 1 ? "" : "s") removed")
    }
}
