import Foundation
import Testing
import TestSupport

/// A fault at every file-system step of a backup and of a prune: the command fails with an
/// error that names the cause (or, for a short write, succeeds), the repository checks clean
/// with every snapshot restoring to its bytes, nothing is left behind, and the same command
/// succeeds once the fault is gone.
///
/// The steps are counted first (a fault-free run under the same library), then every step of
/// every kind fails in turn, each on a fresh copy of the same repository.
@Suite("Storage faults under the repository", .serialized)
struct RepositoryFaultTests {
    /// A repository and the disk versions its snapshots must restore to.
    final class Scenario: @unchecked Sendable {
        let dir: TemporaryDirectory
        let template: String
        let disk: String
        /// Snapshot ID → the bytes it must restore to.
        var expected: [String: Data] = [:]

        init(_ label: String) throws {
            dir = try TemporaryDirectory(label)
            template = dir.file("template")
            disk = dir.file("disk.raw")
            try Tessera.ok(["init", "--repo", template])
        }

        /// Writes `version` of the disk: 2 MiB, a few 64 KiB chunks differ between versions,
        /// one region stays a hole.
        func writeDisk(version: Int) throws -> Data {
            var rng = SeededGenerator(seed: 7)
            var bytes = rng.bytes(1 << 20) + [UInt8](repeating: 0, count: 1 << 20)
            for v in 0...version {
                var r = SeededGenerator(seed: UInt64(100 + v))
                for _ in 0..<3 {
                    let at = Int.random(in: 0..<(2 << 20) - 70_000, using: &r)
                    bytes.replaceSubrange(at..<at + 70_000, with: r.bytes(70_000))
                }
            }
            let data = Data(bytes)
            try data.write(to: URL(fileURLWithPath: disk))
            return data
        }

        func backup(_ repo: String) throws -> String {
            try Tessera.backup(repo: repo, disk: "d", source: disk)
        }

        /// A fresh copy of the template for one fault.
        func copy(_ name: String) throws -> String {
            let path = dir.file(name)
            try? FileManager.default.removeItem(atPath: path)
            try TestSupport.run("cp", ["-a", template, path])
            return path
        }

        /// The repository is whole after whatever happened: it checks clean with every chunk
        /// re-read, holds no temp file, every snapshot it lists restores to its bytes, and every
        /// snapshot that must survive is listed.
        func expectConsistent(_ repo: String, mustHave: Set<String>, newBytes: Data?, _ context: String,
                              sourceLocation: SourceLocation = #_sourceLocation) throws -> [String] {
            let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
            #expect(check.succeeded, "check after \(context): \(check.stdout) \(check.stderr)", sourceLocation: sourceLocation)
            #expect(FaultInjection.leftovers(in: repo).isEmpty, "temp files left after \(context): \(FaultInjection.leftovers(in: repo))",
                    sourceLocation: sourceLocation)
            let ids = try Tessera.snapshotIDs(repo: repo)
            #expect(mustHave.isSubset(of: Set(ids)), "a snapshot went missing after \(context): \(ids)", sourceLocation: sourceLocation)
            for id in ids {
                let bytes = try Tessera.restore(repo: repo, snapshot: id, scratch: dir.path)
                let want = expected[id] ?? newBytes
                #expect(bytes == want, "snapshot \(id) does not restore to its disk after \(context)", sourceLocation: sourceLocation)
            }
            return ids
        }

        /// Counts the steps `arguments` (given a repository path) takes under the repository,
        /// then runs it once per fault of `kind`, each on a fresh copy of the template. A failed
        /// run must fail cleanly, a short write must be retried; `verify` judges the rest.
        func everyFault(_ kind: FaultInjection.Kind, of what: String, _ arguments: (String) -> [String],
                        verify: (_ repo: String, _ result: CommandResult, _ fired: String?, _ context: String) throws -> Void) throws {
            let counting = try copy("counting")
            let counts = try FaultInjection(path: counting, report: dir.file("report")).countSteps(arguments(counting))
            #expect((counts[kind.name] ?? 0) > 0, "\(what) makes no \(kind.name) call under the repository: \(counts)")
            var tried = 0
            for fault in FaultInjection.plan(counts, kinds: [kind]) {
                let repo = try copy("repo")
                let faulty = FaultInjection(path: repo, report: dir.file("report"))
                let r = try faulty.run(arguments(repo), fault: fault)
                let fired = faulty.fired()
                if kind.name == "short" {
                    #expect(r.succeeded, "a short write must be retried, not fail \(what) (\(fault), \(fired ?? "-")): \(r.stderr)")
                } else if !r.succeeded {
                    FaultInjection.expectCleanFailure(r, fault, fired: fired)
                }
                try verify(repo, r, fired, "\(what) under \(fault) (\(fired ?? "did not fire"), exit \(r.status))")
                tried += 1
            }
            print("\(kind.name): \(tried) faults over \(counts[kind.name] ?? 0) steps of \(what)")
        }
    }

    /// Faults tried per kind (each at every step of that kind).
    static let kinds = FaultInjection.Kind.all

    @Test("a backup survives a fault at every step", arguments: kinds)
    func backup(kind: FaultInjection.Kind) throws {
        let s = try Scenario("fault-backup-\(kind.name)")
        let v1 = try s.writeDisk(version: 1)
        s.expected[try s.backup(s.template)] = v1
        let first = Set(s.expected.keys)
        let v2 = try s.writeDisk(version: 2)
        try s.everyFault(kind, of: "a backup", { ["backup", "--repo", $0, "--disk", "d", "--source", s.disk] }) { repo, r, _, context in
            let ids = try s.expectConsistent(repo, mustHave: first, newBytes: v2, context)
            #expect(ids.count <= 2, "one backup committed more than one snapshot: \(ids)")
            if r.succeeded { #expect(ids.count == 2, "a backup that succeeded committed nothing (\(context))") }
            // The fault is gone: the same backup succeeds and restores to the disk.
            let again = try s.backup(repo)
            let restored = try Tessera.restore(repo: repo, snapshot: again, scratch: s.dir.path)
            #expect(restored == v2, "the retry after \(context)")
        }
    }

    @Test("a prune survives a fault at every step", arguments: kinds)
    func prune(kind: FaultInjection.Kind) throws {
        let s = try Scenario("fault-prune-\(kind.name)")
        var order: [String] = []
        for version in 1...3 {
            let bytes = try s.writeDisk(version: version)
            let id = try s.backup(s.template)
            s.expected[id] = bytes
            order.append(id)
        }
        // The two older snapshots go: their chunks become garbage, some in packs the newest
        // still uses (so the prune deletes packs and rewrites others).
        try Tessera.ok(["forget", "--repo", s.template, "--keep-last", "1"])
        let kept: Set = [order[2]]
        try s.everyFault(kind, of: "a prune", { ["prune", "--repo", $0] }) { repo, _, _, context in
            let ids = try s.expectConsistent(repo, mustHave: kept, newBytes: nil, context)
            #expect(Set(ids) == kept, "a prune changed the snapshots: \(ids) (\(context))")
            // The fault is gone: the prune finishes and leaves a clean, smaller repository.
            try Tessera.ok(["prune", "--repo", repo])
            _ = try s.expectConsistent(repo, mustHave: kept, newBytes: nil, "the prune retried after \(context)")
        }
    }

    /// A check that cannot read an object must say so, not call it damage: it sets nothing
    /// aside (that would make the next backup store good data again, or worse, make an admin
    /// forget good snapshots), and a check after the fault is clean.
    @Test("a check that hits a read error or a failing write reports it and sets nothing aside",
          arguments: [FaultInjection.Kind.read, .create, .write, .sync, .rename])
    func check(kind: FaultInjection.Kind) throws {
        let s = try Scenario("fault-check-\(kind.name)")
        for version in 1...2 {
            let bytes = try s.writeDisk(version: version)
            s.expected[try s.backup(s.template)] = bytes
        }
        let all = Set(s.expected.keys)
        try s.everyFault(kind, of: "a check --read-data", { ["check", "--repo", $0, "--read-data", "--json"] }) { repo, r, fired, context in
            if kind.name == "read", let fired {
                #expect(!r.succeeded, "a check that could not read \(fired) reported the repository clean")
            }
            let summary = Tessera.lines(r).last { $0["type"] as? String == "summary" }
            #expect(summary == nil || summary?["set_aside_now"] as? Int == 0, "\(context): \(r.stdout)")
            let ids = try s.expectConsistent(repo, mustHave: all, newBytes: nil, context)
            #expect(Set(ids) == all)
        }
    }

    /// A lock file that cannot be read was once skipped as if absent: a prune could then run
    /// beside a backup. Now the command refuses, and takes no lock of its own.
    @Test("a lock file that cannot be read stops the command instead of being ignored")
    func unreadableLock() throws {
        let s = try Scenario("fault-lock")
        let bytes = try s.writeDisk(version: 1)
        let first = try s.backup(s.template)
        s.expected[first] = bytes
        let repo = try s.copy("repo")
        let faulty = FaultInjection(path: "\(repo)/locks", report: s.dir.file("report"))
        for command in [["backup", "--repo", repo, "--disk", "d", "--source", s.disk], ["prune", "--repo", repo]] {
            let fault = FaultInjection.Fault(kind: .read, step: 1, errno: "EIO")
            let r = try faulty.run(command, fault: fault)
            #expect(faulty.fired() != nil, "\(command[0]) read no lock file")
            #expect(!r.succeeded, "\(command[0]) went on without knowing who holds the repository")
            FaultInjection.expectCleanFailure(r, fault, fired: faulty.fired())
            #expect(try FileManager.default.contentsOfDirectory(atPath: "\(repo)/locks").isEmpty, "\(command[0]) left its lock")
        }
        #expect(try s.expectConsistent(repo, mustHave: [first], newBytes: nil, "commands refused for an unreadable lock") == [first])
    }
}
