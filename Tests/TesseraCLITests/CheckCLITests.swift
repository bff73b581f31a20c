import Foundation
import Testing
import TestSupport

/// check's exit codes and JSON, subsets that cover everything, and the locks check and
/// prune respect.
struct CheckCLITests {
    @Test func exitCodesSayCleanDamagedNoRepositoryAndLocked() throws {
        let dir = try TemporaryDirectory("cli-check")
        let repo = dir.file("repo")
        try FileManager.default.createDirectory(atPath: dir.file("empty"), withIntermediateDirectories: true)
        #expect(try Tessera.run(["check", "--repo", dir.file("empty")]).status == 10)
        try Tessera.ok(["init", "--repo", repo])
        _ = try makeDisk(at: dir.file("disk.raw"), chunks: 8, seed: 101)
        let snap = try Tessera.backup(repo: repo, source: dir.file("disk.raw"))
        let clean = try Tessera.run(["check", "--repo", repo, "--json"])
        #expect(clean.status == 0)
        #expect(try Tessera.summary(clean)["type"] as? String == "summary" && Tessera.summary(clean)["clean"] as? Bool == true)

        // A lock another host holds (fresh, so not stale): check, prune and backup are refused.
        let now = ISO8601DateFormatter().string(from: Date())
        let lock = "{\"id\":\"00000000000000000000000000000001\",\"kind\":\"exclusive\",\"host\":\"elsewhere\",\"pid\":1,\"started\":\"\(now)\",\"refreshed\":\"\(now)\"}"
        let lockPath = "\(repo)/locks/00000000000000000000000000000001.lock"
        try Data(lock.utf8).write(to: URL(fileURLWithPath: lockPath))
        #expect(try Tessera.run(["check", "--repo", repo]).status == 11)
        let waited = try Tessera.run(["prune", "--repo", repo, "--wait", "1"])
        #expect(waited.status == 11 && waited.stderr.contains("locked"))
        #expect(try Tessera.run(["backup", "--repo", repo, "--disk", "d", "--source", dir.file("disk.raw")]).status == 11)
        try FileManager.default.removeItem(atPath: lockPath)
        try Tessera.ok(["prune", "--repo", repo])

        // A damaged config is a finding (exit 1), not "no repository".
        var config = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(repo)/config")))
        config[config.count - 3] ^= 0x11
        try Data(config).write(to: URL(fileURLWithPath: "\(repo)/config"))
        let damaged = try Tessera.run(["check", "--repo", repo, "--json"])
        #expect(damaged.status == 1)
        let finding = Tessera.lines(damaged).first { $0["type"] as? String == "finding" }
        #expect(finding?["kind"] as? String == "config")
        #expect((finding?["damage"] as? [[String: Any]])?.first?["snapshot"] as? String == snap)
    }

    @Test func theMSlicesOfReadDataSubsetReadEveryPackOnce() throws {
        let dir = try TemporaryDirectory("cli-subset")
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        for seed in 0..<6 as Range<UInt64> {
            _ = try makeDisk(at: dir.file("disk.raw"), chunks: 4, seed: 200 + seed)
            _ = try Tessera.backup(repo: repo, source: dir.file("disk.raw"))
        }
        let all = try Tessera.summary(try Tessera.ok(["check", "--repo", repo, "--read-data", "--json"]))
        let packs = try #require(all["packs"] as? Int)
        #expect(packs == 6 && all["packs_read"] as? Int == 6)
        var read = 0
        for k in 1...3 {
            let s = try Tessera.summary(try Tessera.ok(["check", "--repo", repo, "--read-data-subset", "\(k)/3", "--json"]))
            read += s["packs_read"] as? Int ?? 0
        }
        #expect(read == packs)
        #expect(try Tessera.run(["check", "--repo", repo, "--read-data-subset", "4/3"]).status != 0)
        #expect(try Tessera.run(["check", "--repo", repo, "--read-data-subset", "100%", "--json"]).status == 0)
    }

    /// Check takes the shared lock, so it runs beside backups; what a backup writes
    /// meanwhile (unindexed packs, a snapshot committed mid-check) is never damage.
    @Test func checkBesideRunningBackupsFindsNoDamage() throws {
        let dir = try TemporaryDirectory("cli-check-race")
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        var g = SeededGenerator(seed: 102)
        for round in 0..<4 {
            _ = try makeDisk(at: dir.file("disk.raw"), chunks: 48, seed: 300 + g.next() % 1000)
            let backup = try ChildProcess(tessera: ["backup", "--repo", repo, "--disk", "d", "--source", dir.file("disk.raw")])
            let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
            let backedUp = backup.wait().result
            #expect(backedUp.status == 0, "round \(round): \(backedUp.stderr)")
            #expect(check.status == 0, "round \(round): \(check.stdout) \(check.stderr)")
        }
        #expect(try Tessera.run(["check", "--repo", repo, "--read-data"]).status == 0)
    }
}
