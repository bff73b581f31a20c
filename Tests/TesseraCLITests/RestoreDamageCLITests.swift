import Foundation
import Testing
import TestSupport

/// A damaged chunk stops a restore with an error naming the snapshot, the byte range and the
/// object; with --keep-going the rest is restored byte for byte and the range is listed.
struct RestoreDamageCLITests {
    @Test func aDamagedChunkStopsTheRestoreOrIsListedWithKeepGoing() throws {
        let dir = try TemporaryDirectory("restore-damage")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        // 40 chunks: more than one restore batch, so the damage sits inside a run of reads.
        let disk = try makeDisk(at: source, chunks: 40, seed: 47)
        let snapshot = try Tessera.backup(repo: repo, source: source)
        let victim = 33, start = victim * 65536
        let pack = try damageChunk(victim, of: disk, in: repo)
        let stopped = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", dir.file("a.raw")])
        #expect(stopped.status == 1)
        for fragment in [snapshot, "[\(start), \(start + 65536))", pack, "--keep-going"] {
            #expect(stopped.stderr.contains(fragment), "the error does not name \(fragment): \(stopped.stderr)")
        }

        let out = dir.file("b.raw")
        let going = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", out, "--keep-going", "--json"])
        #expect(going.status == 1) // finished, but not whole: a scheduler must notice
        let summary = try Tessera.summary(going)
        let damaged = try #require(summary["damaged"] as? [[String: Any]])
        #expect(damaged.count == 1 && damaged.first?["offset"] as? Int == start && damaged.first?["length"] as? Int == 65536)
        var expected = disk
        expected.replaceSubrange(start..<(start + 65536), with: Data(count: 65536))
        let restored = try Data(contentsOf: URL(fileURLWithPath: out))
        #expect(restored == expected, "everything but the damaged range must restore exactly (and that range reads as zeroes)")
    }
}
