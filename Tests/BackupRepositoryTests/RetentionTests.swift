@testable import BackupRepository
import Codecs
import Foundation
import Testing
import TestSupport

/// Retention policies against tables of snapshot times, each with the kept set written
/// out by hand (restic's and PBS's semantics; ISO weeks in UTC).
struct RetentionTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var policy: RetentionPolicy
        /// (disk, UTC time "yyyy-MM-dd HH:mm", tags)
        var snapshots: [(String, String, [String])]
        /// The times kept, with their reasons.
        var kept: [String: [String]]
        var testDescription: String { name }
    }

    static func time(_ s: String) -> Date {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd HH:mm"
        return f.date(from: s)!
    }

    static let cases: [Case] = [
        Case(name: "keep-last 2", policy: RetentionPolicy(keepLast: 2),
             snapshots: [("a", "2024-03-01 01:00", []), ("a", "2024-03-02 01:00", []), ("a", "2024-03-03 01:00", []),
                         ("a", "2024-03-04 01:00", []), ("a", "2024-03-05 01:00", [])],
             kept: ["2024-03-05 01:00": ["last"], "2024-03-04 01:00": ["last"]]),
        Case(name: "keep-daily 3 keeps the newest of each day", policy: RetentionPolicy(keepDaily: 3),
             snapshots: [("a", "2024-03-01 01:00", []), ("a", "2024-03-01 23:00", []), ("a", "2024-03-02 05:00", []),
                         ("a", "2024-03-03 02:00", []), ("a", "2024-03-03 22:59", []), ("a", "2024-03-05 00:00", [])],
             kept: ["2024-03-05 00:00": ["daily"], "2024-03-03 22:59": ["daily"], "2024-03-02 05:00": ["daily"]]),
        Case(name: "keep-hourly 2", policy: RetentionPolicy(keepHourly: 2),
             snapshots: [("a", "2024-03-01 10:05", []), ("a", "2024-03-01 10:55", []), ("a", "2024-03-01 11:10", []),
                         ("a", "2024-03-01 12:00", []), ("a", "2024-03-01 12:30", [])],
             kept: ["2024-03-01 12:30": ["hourly"], "2024-03-01 11:10": ["hourly"]]),
        // 2019-12-30 (Mon) is in ISO week 1 of 2020; 2021-01-03 (Sun) in week 53 of 2020;
        // 2021-01-04 (Mon) in week 1 of 2021.
        Case(name: "keep-weekly 3 across new year (ISO weeks)", policy: RetentionPolicy(keepWeekly: 3),
             snapshots: [("a", "2019-12-29 12:00", []), ("a", "2019-12-30 12:00", []), ("a", "2020-12-28 12:00", []),
                         ("a", "2021-01-03 12:00", []), ("a", "2021-01-04 12:00", [])],
             kept: ["2021-01-04 12:00": ["weekly"], "2021-01-03 12:00": ["weekly"], "2019-12-30 12:00": ["weekly"]]),
        Case(name: "Sunday and Monday are different weeks; Saturday and Sunday the same", policy: RetentionPolicy(keepWeekly: 10),
             snapshots: [("a", "2024-12-28 12:00", []), ("a", "2024-12-29 12:00", []), ("a", "2024-12-30 12:00", []),
                         ("a", "2025-01-01 12:00", [])],
             kept: ["2025-01-01 12:00": ["weekly"], "2024-12-29 12:00": ["weekly"]]),
        Case(name: "monthly and yearly together", policy: RetentionPolicy(keepMonthly: 2, keepYearly: 2),
             snapshots: [("a", "2022-06-01 00:00", []), ("a", "2022-12-31 23:59", []), ("a", "2023-01-01 00:00", []),
                         ("a", "2023-11-15 00:00", []), ("a", "2023-12-01 00:00", []), ("a", "2023-12-20 00:00", [])],
             kept: ["2023-12-20 00:00": ["monthly", "yearly"], "2023-11-15 00:00": ["monthly"], "2022-12-31 23:59": ["yearly"]]),
        Case(name: "keep-tag keeps every tagged snapshot; the newest is always kept", policy: RetentionPolicy(keepTags: ["gold"]),
             snapshots: [("a", "2024-01-01 00:00", ["gold"]), ("a", "2024-02-01 00:00", []), ("a", "2024-03-01 00:00", ["gold", "x"]),
                         ("a", "2024-04-01 00:00", [])],
             kept: ["2024-01-01 00:00": ["tag:gold"], "2024-03-01 00:00": ["tag:gold"], "2024-04-01 00:00": ["newest"]]),
        Case(name: "rules combine: a snapshot kept by any rule is kept, with every reason",
             policy: RetentionPolicy(keepLast: 1, keepDaily: 2, keepTags: ["pin"]),
             snapshots: [("a", "2024-05-01 08:00", ["pin"]), ("a", "2024-05-02 08:00", []), ("a", "2024-05-03 08:00", []),
                         ("a", "2024-05-03 09:00", [])],
             kept: ["2024-05-03 09:00": ["last", "daily"], "2024-05-02 08:00": ["daily"], "2024-05-01 08:00": ["tag:pin"]]),
        Case(name: "rules apply per disk", policy: RetentionPolicy(keepLast: 1),
             snapshots: [("a", "2024-05-01 08:00", []), ("b", "2024-05-01 09:00", []), ("a", "2024-05-02 08:00", []),
                         ("b", "2024-04-01 09:00", [])],
             kept: ["2024-05-02 08:00": ["last"], "2024-05-01 09:00": ["last"]]),
        Case(name: "more periods asked than exist keeps one per period", policy: RetentionPolicy(keepMonthly: 12),
             snapshots: [("a", "2024-01-05 00:00", []), ("a", "2024-01-20 00:00", []), ("a", "2024-03-01 00:00", [])],
             kept: ["2024-01-20 00:00": ["monthly"], "2024-03-01 00:00": ["monthly"]]),
    ]

    @Test(arguments: cases)
    func policyKeepsExactlyTheExpectedSnapshots(_ c: Case) {
        var g = 0 as UInt64
        let records = c.snapshots.map { disk, t, tags in
            g += 1
            return SnapshotRecord(id: Digest128(high: g, low: 7).hex, diskName: disk, time: Self.time(t), diskSize: 0, chunkSize: 4096,
                                  source: .full, tags: tags, diskMap: Digest128(high: 0, low: 1))
        }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd HH:mm"
        let decisions = Retention.apply(c.policy, to: records.shuffled())
        #expect(decisions.count == records.count)
        var kept: [String: [String]] = [:]
        for d in decisions where d.keep { kept[f.string(from: d.snapshot.time)] = d.reasons }
        #expect(kept == c.kept)
    }

    @Test(arguments: StoreKind.allCases)
    func anEmptyPolicyIsRefused(_ kind: StoreKind) throws {
        #expect(RetentionPolicy().isEmpty)
        #expect(!RetentionPolicy(keepTags: ["x"]).isEmpty)
        let (t, repo) = try kind.makeRepository("retention", chunkSize: 4096)
        defer { withExtendedLifetime(t) {} }
        let e = #expect(throws: RepositoryError.self) { _ = try Retention.forget(RetentionPolicy(), in: repo) }
        #expect(e?.code == .invalidArgument)
    }
}

