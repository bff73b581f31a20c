import BlockIO
import Foundation
import Testing
import TestSupport

/// Promise 4: a backup killed at any instant leaves a repository whose every snapshot
/// restores exactly; the next backup succeeds (releasing the dead backup's checkpoint
/// itself) and loses nothing.
struct KilledBackupTests {
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func killedBackupsLoseNothing() throws {
        let rounds = ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" ? 30 : 6
        let dir = try TemporaryDirectory("killed")
        let size = 32 << 20
        let diskPath = dir.file("disk.raw")
        var rng = SeededGenerator(seed: 4242)
        var model = DiskModel(size: size)
        model.randomize(at: 4 << 20, length: 16 << 20, using: &rng)
        try model.write(to: diskPath)
        let filter = try FilterProcess.started(directory: dir, diskName: "d", diskPath: diskPath)
        defer { filter.stop() }
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath])

        var known: [String: [UInt8]] = [:]
        func adoptNewSnapshots() throws {
            let list = try Tessera.ok(["snapshots", "--repo", repo, "--json"])
            let rows = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [[String: Any]]
            for row in rows {
                let id = row["id"] as! String
                if known[id] == nil { known[id] = model.bytes }
            }
        }
        try adoptNewSnapshots()

        for round in 0..<rounds {
            let writes = randomWrites(20, maxPages: 32, diskSize: size, rng: &rng)
            try filter.write(writes)
            for w in writes { model.fill(w.value, at: UInt64(w.offset), length: UInt64(w.length)) }
            // Sometimes a full backup (long), sometimes an incremental, killed at a random instant
            // (the sleep is the point of the test).
            let backup = try ChildProcess(tessera: ["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath]
                                                   + (round % 2 == 0 ? ["--full"] : []))
            usleep(UInt32.random(in: 0...400_000, using: &rng))
            backup.kill()
            try adoptNewSnapshots()
        }

        // The next backup succeeds and loses nothing.
        let last = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath, "--json"]))
        try adoptNewSnapshots()
        #expect(known[last["snapshot"] as! String] == model.bytes)
        // Every committed snapshot restores exactly as the disk was when it was taken.
        for (id, bytes) in known {
            let out = dir.file("r-\(id).raw")
            try Tessera.ok(["restore", "--repo", repo, id, "--to", out])
            expectSame(try fileBytes(out), bytes, "snapshot \(id) restored")
            try FileManager.default.removeItem(atPath: out)
        }
        // And the repository passes a full check, every byte re-hashed.
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(check.status == 0, "check after killed backups: \(check.stdout) \(check.stderr)")
    }
}
