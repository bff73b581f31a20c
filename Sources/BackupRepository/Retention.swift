import Foundation

/// A retention policy (restic's and PBS's `keep-*` rules).
///
/// Rules apply per disk. `keepLast` keeps the N newest snapshots. Each period rule keeps
/// the newest snapshot of each of the N most recent periods that have snapshots (hours,
/// days, ISO 8601 weeks, months, years, all in UTC). `keepTags` keeps every snapshot with
/// one of the tags. `keepWithin` keeps every snapshot taken within that many seconds of the
/// disk's newest one (restic's `--keep-within`). A snapshot kept by any rule is kept, and the
/// newest snapshot of each disk is always kept.
public struct RetentionPolicy: Sendable, Equatable {
    public var keepLast = 0
    public var keepHourly = 0
    public var keepDaily = 0
    public var keepWeekly = 0
    public var keepMonthly = 0
    public var keepYearly = 0
    public var keepTags: [String] = []
    /// Seconds before the disk's newest snapshot within which every snapshot is kept.
    public var keepWithin: Double?

    public init(keepLast: Int = 0, keepHourly: Int = 0, keepDaily: Int = 0, keepWeekly: Int = 0, keepMonthly: Int = 0,
                keepYearly: Int = 0, keepTags: [String] = [], keepWithin: Double? = nil) {
        self.keepLast = keepLast
        self.keepHourly = keepHourly
        self.keepDaily = keepDaily
        self.keepWeekly = keepWeekly
        self.keepMonthly = keepMonthly
        self.keepYearly = keepYearly
        self.keepTags = keepTags
        self.keepWithin = keepWithin
    }

    /// True when no rule is set: such a policy would keep only the newest snapshot of each
    /// disk, so `forget` refuses it rather than delete nearly everything by accident.
    public var isEmpty: Bool {
        keepLast <= 0 && keepHourly <= 0 && keepDaily <= 0 && keepWeekly <= 0 && keepMonthly <= 0 && keepYearly <= 0 && keepTags.isEmpty
            && (keepWithin ?? 0) <= 0
    }
}

/// What a policy decides for one snapshot, and why.
public struct RetentionDecision: Sendable, Equatable {
    public var snapshot: SnapshotRecord
    /// The rules that keep it (`last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`,
    /// `tag:T`, `within`, `newest`); empty means it is forgotten.
    public var reasons: [String]
    public var keep: Bool { !reasons.isEmpty }
}

public enum Retention {
    /// The UTC ISO 8601 calendar the period rules use (weeks start on Monday; week 1 holds
    /// the year's first Thursday, so 2021-01-03 is in week 53 of 2020).
    public static let calendar: Calendar = {
        var c = Calendar(identifier: .iso8601)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }()

    /// Applies a policy to snapshots (any order, any disks). Returns one decision per
    /// snapshot, newest first within each disk, disks in name order.
    public static func apply(_ policy: RetentionPolicy, to snapshots: [SnapshotRecord]) -> [RetentionDecision] {
        let byDisk = Dictionary(grouping: snapshots, by: \.diskName)
        var out: [RetentionDecision] = []
        for disk in byDisk.keys.sorted() {
            let list = byDisk[disk]!.sorted { ($0.time, $0.id) > ($1.time, $1.id) }
            var reasons = [[String]](repeating: [], count: list.count)
            for i in 0..<min(max(policy.keepLast, 0), list.count) { reasons[i].append("last") }
            let rules: [(String, Int, Set<Calendar.Component>)] = [
                ("hourly", policy.keepHourly, [.year, .month, .day, .hour]),
                ("daily", policy.keepDaily, [.year, .month, .day]),
                ("weekly", policy.keepWeekly, [.yearForWeekOfYear, .weekOfYear]),
                ("monthly", policy.keepMonthly, [.year, .month]),
                ("yearly", policy.keepYearly, [.year]),
            ]
            for (name, n, components) in rules where n > 0 {
                var periods = 0
                var last: DateComponents?
                for (i, s) in list.enumerated() {
                    let period = calendar.dateComponents(components, from: s.time)
                    // Newest first: the first snapshot met in a period is that period's newest.
                    if period != last {
                        last = period
                        guard periods < n else { break }
                        periods += 1
                        reasons[i].append(name)
                    }
                }
            }
            for (i, s) in list.enumerated() {
                for t in policy.keepTags where s.tags.contains(t) { reasons[i].append("tag:\(t)") }
            }
            if let within = policy.keepWithin, within > 0, let newest = list.first?.time {
                for (i, s) in list.enumerated() where newest.timeIntervalSince(s.time) <= within { reasons[i].append("within") }
            }
            if !list.isEmpty && reasons[0].isEmpty { reasons[0].append("newest") }
            for (i, s) in list.enumerated() { out.append(RetentionDecision(snapshot: s, reasons: reasons[i])) }
        }
        return out
    }

    /// Deletes the snapshot records a policy does not keep (under the exclusive lock the
    /// caller holds). Their data stays until `prune`.
    /// - Returns: the decisions, as `apply` returns them.
    public static func forget(_ policy: RetentionPolicy, in repo: Repository, disk: String? = nil, dryRun: Bool = false) throws -> [RetentionDecision] {
        guard !policy.isEmpty else {
            throw RepositoryError(.invalidArgument, "no keep rule given: that would forget every snapshot but the newest of each disk; give at least one --keep-* option")
        }
        // Damaged records are left alone (`repair snapshots --forget` handles them).
        let all = try repo.readAllSnapshots().records.filter { disk == nil || $0.diskName == disk }
        let decisions = apply(policy, to: all)
        if !dryRun {
            for d in decisions where !d.keep { try repo.store.delete(ObjectKey(.snapshot, d.snapshot.id)) }
            try repo.store.syncPendingDirectories()
        }
        return decisions
    }
}
