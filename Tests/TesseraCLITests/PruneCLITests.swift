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

    /// The dry run predicts the run: same packs deleted and rewritten, same bytes freed.
    @Test func pruneDryRunPredictsWhatTheRunDoes() throws {
        let dir = try TemporaryDirectory("cli-prune-dry")
        let repo = dir.file("repo")
        let source = dir.file("disk.raw")
        var expected = try Self.nightly(repo: repo, source: source, nights: 8, seed: 96)
        // Two more nights rewrite every chunk but the first four. Four scattered changes a
        // night alone never leave a night's pack wholly unreferenced; now the forgotten nights'
        // packs are garbage (deleted) but the first one, which still holds chunks 0-3 (repacked).
        var disk = try Data(contentsOf: URL(fileURLWithPath: source))
        var g = SeededGenerator(seed: 196)
        for _ in 0..<2 {
            disk.replaceSubrange(4 * 65536..<32 * 65536, with: Data(g.bytes(28 * 65536)))
            try disk.write(to: URL(fileURLWithPath: source))
            expected[try Tessera.backup(repo: repo, source: source)] = disk
        }
        try Tessera.ok(["forget", "--repo", repo, "--keep-last", "2"])
        let plan = try Tessera.summary(try Tessera.ok(["prune", "--repo", repo, "--dry-run", "--json"]))
        let done = try Tessera.summary(try Tessera.ok(["prune", "--repo", repo, "--json"]))
        try #require((done["packs_repacked"] as? Int ?? 0) > 0 && (done["packs_deleted"] as? Int ?? 0) > 0,
                     "the repository must need both deleting and repacking for this test: \(done)")
        for key in ["packs_deleted", "packs_repacked", "packs_written", "chunks_moved", "index_files_deleted", "index_files_written",
                    "disk_maps_deleted", "map_pages_deleted", "bytes_before", "bytes_after", "bytes_freed"] {
            #expect(plan[key] as? Int == done[key] as? Int, "\(key): the dry run said \(plan[key] ?? "nothing"), the run did \(done[key] ?? "nothing")")
        }
        #expect((plan["bytes_freed"] as? Int ?? 0) > 0)
        try Self.verify(repo: repo, expected: expected, scratch: dir.path)
    }

    /// A repository on a file system filled to the brim by its backups: after forget,
    /// prune deletes what is wholly unreferenced first (durably out of the index), then
    /// repacks in the room that made, and frees space.
    @Test func pruneOnAFullFileSystemDeletesBeforeItRepacks() throws {
        let dir = try TemporaryDirectory("cli-prune-full")
        let mount = dir.file("fs")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let mounted = try runCommand("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", mount])
        try #require(mounted.succeeded, "cannot mount a tmpfs (needs root): \(mounted.stderr)")
        defer { _ = try? runCommand("umount", [mount]) }
        let repo = "\(mount)/repo", source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        // Chunks 0-7 never change (their first pack stays partly live: a repack); chunks
        // 8-31 are rewritten every night (those packs become wholly garbage).
        var disk = try makeDisk(at: source, chunks: 32, seed: 97)
        var g = SeededGenerator(seed: 98)
        var expected: [String: Data] = [:]
        var full = false
        for _ in 0..<40 {
            for c in 8..<32 where c % 4 != 3 { disk.replaceSubrange(c * 65536..<(c + 1) * 65536, with: Data(g.bytes(65536))) }
            try disk.write(to: URL(fileURLWithPath: source))
            let r = try Tessera.run(["backup", "--repo", repo, "--disk", "d", "--source", source, "--json"])
            if r.status != 0 {
                #expect(r.stderr.lowercased().contains("no space"), "\(r.stderr)")
                full = true
                break
            }
            expected[try #require(try Tessera.summary(r)["snapshot"] as? String)] = disk
        }
        try #require(full && expected.count >= 3, "the file system never filled up")
        // To the brim: only room for lock files is left, none for a repacked pack.
        let filler = FileManager.default.createFile(atPath: "\(mount)/filler", contents: nil)
        try #require(filler)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(mount)/filler"))
        let block = Data(repeating: 0xff, count: 4096)
        while (try? handle.write(contentsOf: block)) != nil {}
        try handle.truncate(atOffset: max(0, try handle.offset() - 64 * 1024))
        try handle.close()
        func free() -> UInt64 {
            var s = statvfs()
            return statvfs(mount, &s) == 0 ? UInt64(s.f_bavail) * UInt64(s.f_frsize) : 0
        }
        let freeBefore = free()
        #expect(freeBefore < 256 * 1024)

        try Tessera.ok(["forget", "--repo", repo, "--keep-last", "1"])
        let pruned = try Tessera.run(["prune", "--repo", repo, "--json"])
        #expect(pruned.status == 0, "prune on a full file system: \(pruned.stdout) \(pruned.stderr)")
        let report = try Tessera.summary(pruned)
        #expect((report["packs_repacked"] as? Int ?? 0) > 0 && (report["bytes_freed"] as? Int ?? 0) > 0, "\(report)")
        #expect(free() > freeBefore + 1024 * 1024, "prune freed no space")
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
            // Startup takes a few tens of ms and a small prune under a hundred: most kills land
            // mid-prune (the sleep is the point of the test).
            let delay = UInt32(20_000 + g.next() % 100_000)
            let prune = try ChildProcess(tessera: ["prune", "--repo", repo])
            usleep(delay)
            prune.kill()
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
            let backupArguments = ["backup", "--repo", repo, "--disk", "d", "--source", source, "--json"]
            let pruneArguments = ["prune", "--repo", repo]
            // Started in a seeded order: either may take the lock first.
            let backupFirst = g.next() % 2 == 0
            let first = try ChildProcess(tessera: backupFirst ? backupArguments : pruneArguments)
            let second = try ChildProcess(tessera: backupFirst ? pruneArguments : backupArguments)
            let (backup, prune) = backupFirst ? (first, second) : (second, first)
            let (backedUp, pruned) = (backup.wait().result, prune.wait().result)
            #expect([0, 11].contains(backedUp.status), "round \(round): backup exited \(backedUp.status): \(backedUp.stderr)")
            #expect([0, 11].contains(pruned.status), "round \(round): prune exited \(pruned.status): \(pruned.stderr)")
            outcomes.append("backup \(backedUp.status) prune \(pruned.status)")
            if backedUp.status == 0 {
                expected[try #require(try Tessera.summary(backedUp)["snapshot"] as? String)] = disk
            }
            try Self.verify(repo: repo, expected: expected, scratch: dir.path)
        }
        #expect(outcomes.count == 5)
    }
}
