import Foundation
import Testing
import TestSupport

/// Self-healing through the real binary: check --read-data names a damaged chunk (object,
/// snapshot, byte range) and sets it aside; the next backup stores it again; then every
/// snapshot, old and new, checks clean and restores byte-identical.
struct HealingCLITests {
    struct Damaged {
        var chunk: String
        var pack: String
        var index: Int
    }

    /// Flips a byte in the payload of the first chunk of the first pack. The chunk is stored
    /// raw (random data), so its payload is found on the disk to learn which range it held.
    static func damageFirstChunk(repo: String, disk: Data) throws -> Damaged {
        let path = try #require(packFiles(repo).first)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let at = 8 // the first envelope follows the 8-byte pack header
        #expect(Array(bytes[at..<at + 4]) == Array("TCHK".utf8) && bytes[at + 5] == 0, "first chunk is stored raw")
        let payload = Data(bytes[at + 48..<at + 48 + 65536])
        let index = try #require((0..<disk.count / 65536).first { disk[$0 * 65536..<($0 + 1) * 65536] == payload })
        bytes[at + 48 + 1000] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let pack = String(URL(fileURLWithPath: path).lastPathComponent.dropLast(".pack".count))
        return Damaged(chunk: hex(bytes[at + 16..<at + 32]), pack: pack, index: index)
    }

    static func expectNamed(_ check: CommandResult, _ d: Damaged, snapshot: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(check.status == 1, "check exit \(check.status): \(check.stdout)", sourceLocation: sourceLocation)
        let findings = Tessera.lines(check).filter { $0["type"] as? String == "finding" }
        #expect(findings.count == 1, "\(findings)", sourceLocation: sourceLocation)
        guard let f = findings.first else { return }
        #expect(f["object"] as? String == "chunk \(d.chunk) in pack \(d.pack)", sourceLocation: sourceLocation)
        #expect(f["set_aside"] as? Bool == true, sourceLocation: sourceLocation)
        let damage = f["damage"] as? [[String: Any]] ?? []
        #expect(damage.count == 1 && damage.first?["snapshot"] as? String == snapshot, sourceLocation: sourceLocation)
        let ranges = damage.first?["ranges"] as? [[String: Any]] ?? []
        #expect(ranges.count == 1, sourceLocation: sourceLocation)
        #expect(ranges.first?["offset"] as? Int == d.index * 65536 && ranges.first?["length"] as? Int == 65536,
                "ranges \(ranges) expected chunk \(d.index)", sourceLocation: sourceLocation)
        #expect(Tessera.lines(check).last?["type"] as? String == "summary", sourceLocation: sourceLocation)
    }

    @Test func aDamagedChunkIsNamedSetAsideAndHealedByTheNextBackup() throws {
        let dir = try TemporaryDirectory("cli-heal")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 64, seed: 81)
        let old = try Tessera.backup(repo: repo, source: source)
        #expect(try Tessera.run(["check", "--repo", repo, "--read-data"]).status == 0)

        let d = try Self.damageFirstChunk(repo: repo, disk: disk)
        #expect(try Tessera.run(["check", "--repo", repo]).status == 0, "structure alone does not read payloads")
        Self.expectNamed(try Tessera.run(["check", "--repo", repo, "--read-data", "--json"]), d, snapshot: old)
        #expect(try Tessera.run(["restore", "--repo", repo, old, "--to", dir.file("r.raw")]).status != 0)

        // The file is unchanged; the set-aside chunk is stored again (healing).
        let next = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--source", source, "--json"]))
        #expect(next["chunks_new"] as? Int == 1)
        let clean = try Tessera.run(["check", "--repo", repo, "--read-data", "--json"])
        #expect(clean.status == 0, "\(clean.stdout)")
        // The old snapshot is clean again: maps name chunks by ID, and the new copy is indexed.
        #expect(try Tessera.restore(repo: repo, snapshot: old, scratch: dir.path) == disk)
        #expect(try Tessera.restore(repo: repo, snapshot: try #require(next["snapshot"] as? String), scratch: dir.path) == disk)
    }

    /// Through the filter with CBT: the tracker says nothing changed in the damaged chunk,
    /// and the agent still re-reads it because the repository no longer holds it.
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func aSetAsideChunkIsReReadThroughTheFilterEvenWhenTheTrackerSaysUnchanged() throws {
        let dir = try TemporaryDirectory("cli-heal-cbt")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let original = try makeDisk(at: source, chunks: 32, seed: 82)
        let filter = try FilterProcess.started(directory: dir, diskName: "d", diskPath: source)
        defer { filter.stop() }
        let first = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath, "--json"]))
        let old = try #require(first["snapshot"] as? String)
        let d = try Self.damageFirstChunk(repo: repo, disk: original)
        Self.expectNamed(try Tessera.run(["check", "--repo", repo, "--read-data", "--json"]), d, snapshot: old)

        // One write elsewhere (the damaged chunk's block stays clean for the tracker).
        let elsewhere = (d.index + 5) % 32
        try filter.write([(offset: elsewhere * 65536, length: 4096, value: 0x5a)])
        let next = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath, "--json"]))
        #expect(next["mode"] as? String == "cbt")
        #expect(next["chunks_new"] as? Int == 2, "the written chunk and the healed one: \(next)")
        #expect(try Tessera.run(["check", "--repo", repo, "--read-data"]).status == 0)
        var now = original
        now.replaceSubrange(elsewhere * 65536..<elsewhere * 65536 + 4096, with: Data(repeating: 0x5a, count: 4096))
        #expect(try Tessera.restore(repo: repo, snapshot: old, scratch: dir.path) == original)
        #expect(try Tessera.restore(repo: repo, snapshot: try #require(next["snapshot"] as? String), scratch: dir.path) == now)
    }

    @Test func repairIndexRebuildsDeletedIndexFilesFromThePacks() throws {
        let dir = try TemporaryDirectory("cli-repair")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 40, seed: 83)
        let snap = try Tessera.backup(repo: repo, source: source)
        for f in try FileManager.default.contentsOfDirectory(atPath: "\(repo)/index") {
            try FileManager.default.removeItem(atPath: "\(repo)/index/\(f)")
        }
        let broken = try Tessera.run(["check", "--repo", repo, "--json"])
        #expect(broken.status == 1)
        let finding = Tessera.lines(broken).first { $0["type"] as? String == "finding" }
        #expect(finding?["object"] as? String == "index")
        #expect(try Tessera.run(["restore", "--repo", repo, snap, "--to", dir.file("x.raw")]).status != 0)

        try Tessera.ok(["repair", "index", "--repo", repo])
        #expect(try Tessera.run(["check", "--repo", repo, "--read-data"]).status == 0)
        #expect(try Tessera.restore(repo: repo, snapshot: snap, scratch: dir.path) == disk)
    }

    @Test func repairSnapshotsListsTheLostRangesAndForgetsOnlyWhenAsked() throws {
        let dir = try TemporaryDirectory("cli-repair")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 16, seed: 84)
        let snap = try Tessera.backup(repo: repo, source: source)
        let d = try HealingCLITests.damageFirstChunk(repo: repo, disk: disk)
        #expect(try Tessera.run(["check", "--repo", repo, "--read-data"]).status == 1)
        let listed = try Tessera.run(["repair", "snapshots", "--repo", repo, "--json"])
        #expect(listed.status == 1)
        let line = Tessera.lines(listed).first { $0["type"] as? String == "damaged-snapshot" }
        #expect(line?["snapshot"] as? String == snap)
        let lost = line?["lost"] as? [[String: Any]] ?? []
        #expect(lost.count == 1 && lost.first?["offset"] as? Int == d.index * 65536 && lost.first?["length"] as? Int == 65536)
        #expect(try Tessera.snapshotIDs(repo: repo) == [snap])
        try Tessera.ok(["repair", "snapshots", "--repo", repo, "--forget"])
        #expect(try Tessera.snapshotIDs(repo: repo).isEmpty)
    }
}
