import Foundation
import Testing
import TestSupport

/// forget and prune through the real binary: the retention table, prune killed at random
/// instants and rerun, prune racing a backup. The oracle is a copy of the disk's bytes at
/// every committed snapshot.
struct PruneCLITests {
    /// A repository with `nights` snapshots of an evolving disk; returns the bytes each
    /// snapshot must restore to.
    static func nightly(repo: String, source: String, nights: Int, seed: UInt64) throws -> [String: Data] {
        try Tessera.ok(["init", "--repo", repo])
        var disk = try makeDisk(at: source, chunks: 32, seed: seed)
        var g = SeededGenerator(seed: seed + 1)
        var expected: [String: Data] = [:]
        for _ in 0..<nights {
            for _ in 0..<4 {
                let c = Int(g.next() % 32)
                disk.replaceSubrange(c * 65536..<(c + 1) * 65536, with: Data(g.bytes(65536)))
            }
            try disk.write(to: URL(fileURLWithPath: source))
            expected[try Tessera.backup(repo: repo, source: source)] = disk
        }
        return expected
    }

    /// Every snapshot in the repository restores to its recorded bytes and check is clean.
    static func verify(repo: String, expected: [String: Data], scratch: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let ids = try Tessera.snapshotIDs(repo: repo)
        for id in ids {
            let want = try #require(expected[id], "snapshot \(id) was never committed by the test", sourceLocation: sourceLocation)
            #expect(try Tessera.restore(repo: repo, snapshot: id, scratch: scratch) == want, "snapshot \(id)", sourceLocation: sourceLocation)
        }
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(check.status == 0, "check: \(check.stdout) \(check.stderr)", sourceLocation: sourceLocation)
    }

    @Test func forgetShowsWhatIsKeptAndWhyAndRefusesWithoutRules() throws {
        let dir = try TemporaryDirectory("cli-forget")
        let repo = dir.file("repo")
        let expected = try Self.nightly(repo: repo, source: dir.file("disk.raw"), nights: 4, seed: 91)
        let refused = try Tessera.run(["forget", "--repo", repo])
        #expect(refused.status != 0 && refused.stderr.contains("--keep"))
        let ids = try Tessera.snapshotIDs(repo: repo)
        let dry = try Tessera.ok(["forget", "--repo", repo, "--keep-last", "2", "--dry-run", "--json"])
        let rows = Tessera.lines(dry).filter { $0["type"] as? String == "snapshot" }
        #expect(rows.filter { $0["keep"] as? Bool == true }.compactMap { $0["id"] as? String }.sorted() == ids.suffix(2).sorted())
        #expect(rows.first { $0["keep"] as? Bool == true }?["reasons"] as? [String] == ["last"])
        #expect(try Tessera.snapshotIDs(repo: repo) == ids)

        let before = try Tessera.summary(try Tessera.ok(["forget", "--repo", repo, "--keep-last", "2", "--prune", "--json"]))
        #expect((before["bytes_freed"] as? Int ?? 0) > 0)
        #expect(try Tessera.snapshotIDs(repo: repo) == Array(ids.suffix(2)))
        try Self.verify(repo: repo, expected: expected, scratch: dir.path)
    }

    /// Prune SIGKILLed at seeded random instants, then run again: every remaining snapshot
    /// restores and check is clean.
    @Test func pruneKilledAtRandomInstantsThenRerunLosesNothing() throws {
        let base = try TemporaryDirectory("cli-prune-base")
        let expected = try Self.nightly(repo: base.file("repo"), source: base.file("disk.raw"), nights: 10, seed: 92)
        try Tessera.ok(["forget", "--repo", base.file("repo"), "--keep-last", "3"])
        var g = SeededGenerator(seed: 93)
        let rounds = ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" ? 40 : 10
        for round in 0..<rounds {
            let dir = try TemporaryDirectory("cli-prune-kill")
            let repo = dir.file("repo")
            try FileManager.default.copyItem(atPath: base.file("repo"), toPath: repo)
            let prune = Process()
            prune.executableURL = URL(fileURLWithPath: Tessera.binary)
            prune.arguments = ["prune", "--repo", repo]
            prune.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            prune.standardError = FileHandle(forWritingAtPath: "/dev/null")
            // Startup takes a few tens of ms and a small prune under a hundred: most kills land mid-prune.
            let delay = UInt32(20_000 + g.next() % 100_000)
            try prune.run()
            usleep(delay)
            kill(prune.processIdentifier, SIGKILL)
            prune.waitUntilExit()
            // The killed prune's lock is stale (its pid is dead): the rerun goes ahead.
            let rerun = try Tessera.run(["prune", "--repo", repo])
            #expect(rerun.succeeded, "round \(round) (killed after \(delay) µs): \(rerun.stderr)")
            try Self.verify(repo: repo, expected: expected, scratch: dir.path)
            #expect(try Tessera.snapshotIDs(repo: repo).count == 3)
        }
    }

    /// Prune and a backup started together, seeded rounds: one of them may be refused with
    /// "locked" (exit 11); nothing else may fail, and every committed snapshot restores.
    @Test func pruneRacingABackupNeverLosesACommittedSnapshot() throws {
        let dir = try TemporaryDirectory("cli-prune-race")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        var expected = try Self.nightly(repo: repo, source: source, nights: 3, seed: 94)
        var disk = try Data(contentsOf: URL(fileURLWithPath: source))
        var g = SeededGenerator(seed: 95)
        var outcomes: [String] = []
        for round in 0..<5 {
            try Tessera.ok(["forget", "--repo", repo, "--keep-last", "2"])
            for _ in 0..<3 {
                let c = Int(g.next() % 32)
                disk.replaceSubrange(c * 65536..<(c + 1) * 65536, with: Data(g.bytes(65536)))
            }
            try disk.write(to: URL(fileURLWithPath: source))
            let backupOut = Pipe()
            let backup = Process(), prune = Process()
            backup.executableURL = URL(fileURLWithPath: Tessera.binary)
            backup.arguments = ["backup", "--repo", repo, "--disk", "d", "--source", source, "--json"]
            backup.standardOutput = backupOut
            backup.standardError = FileHandle(forWritingAtPath: "/dev/null")
            prune.executableURL = URL(fileURLWithPath: Tessera.binary)
            prune.arguments = ["prune", "--repo", repo]
            prune.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            prune.standardError = FileHandle(forWritingAtPath: "/dev/null")
            if g.next() % 2 == 0 { try backup.run(); try prune.run() } else { try prune.run(); try backup.run() }
            let output = backupOut.fileHandleForReading.readDataToEndOfFile()
            backup.waitUntilExit()
            prune.waitUntilExit()
            #expect([0, 11].contains(backup.terminationStatus), "round \(round): backup exited \(backup.terminationStatus)")
            #expect([0, 11].contains(prune.terminationStatus), "round \(round): prune exited \(prune.terminationStatus)")
            outcomes.append("backup \(backup.terminationStatus) prune \(prune.terminationStatus)")
            if backup.terminationStatus == 0 {
                let last = String(decoding: output, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
                let summary = try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any]
                expected[try #require(summary?["snapshot"] as? String)] = disk
            }
            try Self.verify(repo: repo, expected: expected, scratch: dir.path)
        }
        #expect(outcomes.count == 5)
    }
}
