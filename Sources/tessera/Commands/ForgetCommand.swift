import ArgumentParser
import BackupRepository
import Foundation

struct ForgetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Delete snapshot records a retention policy does not keep (data goes with prune).",
        discussion: """
            Rules apply per disk. --keep-last N keeps the N newest; --keep-hourly/daily/weekly/monthly/yearly N \
            keep the newest snapshot of each of the N most recent hours/days/ISO weeks/months/years that have \
            snapshots (UTC); --keep-tag T keeps every snapshot tagged T. A snapshot kept by any rule is kept, \
            and the newest snapshot of each disk always is. With no keep option, forget refuses.
            Exit codes: 0 ok, 1 failed, 10 no repository, 11 locked.
            """)
    @OptionGroup var repository: RepositoryOptions
    @Option(help: "Only snapshots of this disk.") var disk: String?
    @Option(help: "Keep the N newest snapshots.") var keepLast = 0
    @Option(help: "Keep the newest snapshot of each of the N most recent hours.") var keepHourly = 0
    @Option(help: "Keep the newest snapshot of each of the N most recent days.") var keepDaily = 0
    @Option(help: "Keep the newest snapshot of each of the N most recent ISO weeks.") var keepWeekly = 0
    @Option(help: "Keep the newest snapshot of each of the N most recent months.") var keepMonthly = 0
    @Option(help: "Keep the newest snapshot of each of the N most recent years.") var keepYearly = 0
    @Option(help: "Keep every snapshot with this tag (repeatable).") var keepTag: [String] = []
    @Flag(help: "Show what would be forgotten, delete nothing.") var dryRun = false
    @Flag(help: "Run prune afterwards.") var prune = false
    @Option(help: "Seconds to keep retrying while another process holds the repository.") var wait: Double = 0
    @Flag(help: "Print JSON lines: one per snapshot, then a summary.") var json = false

    var policy: RetentionPolicy {
        RetentionPolicy(keepLast: keepLast, keepHourly: keepHourly, keepDaily: keepDaily, keepWeekly: keepWeekly,
                        keepMonthly: keepMonthly, keepYearly: keepYearly, keepTags: keepTag)
    }

    func validate() throws {
        for (name, n) in [("last", keepLast), ("hourly", keepHourly), ("daily", keepDaily), ("weekly", keepWeekly),
                          ("monthly", keepMonthly), ("yearly", keepYearly)] where n < 0 {
            throw ValidationError("--keep-\(name) must be 0 or more")
        }
        guard wait >= 0 else { throw ValidationError("--wait is a number of seconds, 0 or more") }
        if policy.isEmpty {
            throw ValidationError("give at least one --keep-* option (--keep-last, --keep-daily, ..., --keep-tag); forget refuses to delete everything but the newest snapshot by accident")
        }
    }

    struct Row: Encodable {
        var type = "snapshot"
        var id: String, disk: String, time: String, keep: Bool, reasons: [String]
    }

    struct Summary: Encodable {
        var type = "summary"
        var kept: Int, forgotten: Int, dryRun: Bool
        enum CodingKeys: String, CodingKey { case type, kept, forgotten, dryRun = "dry_run" }
    }

    func run() throws {
        let decisions = try reportingErrors(json: json) {
            let lock = try MaintenanceLock(path: repository.path, kind: .exclusive, wait: wait)
            defer { lock.release() }
            return try Retention.forget(policy, in: lock.repository, disk: disk, dryRun: dryRun)
        }
        let formatter = ISO8601DateFormatter()
        let rows = decisions.map {
            Row(id: $0.snapshot.id, disk: $0.snapshot.diskName, time: formatter.string(from: $0.snapshot.time), keep: $0.keep, reasons: $0.reasons)
        }
        let kept = rows.filter(\.keep).count
        if json {
            for r in rows { Output.json(r) }
            Output.json(Summary(kept: kept, forgotten: rows.count - kept, dryRun: dryRun))
        } else {
            func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
            print(pad("ID", 10) + pad("DISK", 14) + pad("TIME", 22) + pad("ACTION", 8) + "WHY")
            for r in rows {
                print(pad(String(r.id.prefix(8)), 10) + pad(r.disk, 14) + pad(r.time, 22) + pad(r.keep ? "keep" : "forget", 8)
                      + r.reasons.joined(separator: ", "))
            }
            print("\(kept) kept, \(rows.count - kept) \(dryRun ? "would be forgotten" : "forgotten")")
        }
        if prune && !dryRun {
            let signals = JobSignals()
            let report = try reportingErrors(json: json, cancelled: { PruneCommand.cancelled($0, dryRun: false) }) {
                try PruneCommand.prune(path: repository.path, threshold: 0.2, dryRun: false, wait: wait, cancellation: signals.cancellation,
                                       logger: CommandLogHandler.logger("tessera.prune", json: json))
            }
            PruneCommand.print(report, json: json)
        }
    }
}
