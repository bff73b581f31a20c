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
        var model = try DiskModel.create(at: diskPath, size: size, data: 16 << 20, at: 4 << 20, rng: &rng)
        let filter = try FilterProcess(directory: dir.path, disk: "d", path: diskPath)
        defer { filter.stop() }
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.control])

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
            for w in writes { model.fill(offset: w.offset, length: w.length, with: w.value) }
            // Sometimes a full backup (long), sometimes an incremental, killed at a random instant.
            let backup = Process()
            backup.executableURL = URL(fileURLWithPath: Tessera.binary)
            backup.arguments = ["backup", "--repo", repo, "--disk", "d", "--filter", filter.control] + (round % 2 == 0 ? ["--full"] : [])
            backup.standardOutput = FileHandle.nullDevice
            backup.standardError = FileHandle.nullDevice
            try backup.run()
            usleep(UInt32.random(in: 0...400_000, using: &rng))
            kill(backup.processIdentifier, SIGKILL)
            backup.waitUntilExit()
            try adoptNewSnapshots()
        }

        // The next backup succeeds and loses nothing.
        let last = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.control, "--json"]))
        try adoptNewSnapshots()
        #expect(known[last["snapshot"] as! String] == model.bytes)
        // Every committed snapshot restores exactly as the disk was when it was taken.
        for (id, bytes) in known {
            let out = dir.file("r-\(id).raw")
            try Tessera.ok(["restore", "--repo", repo, id, "--to", out])
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: out))) == bytes, "snapshot \(id) does not restore exactly")
            try FileManager.default.removeItem(atPath: out)
        }
        // And the repository passes a full check, every byte re-hashed.
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(check.status == 0, "check after killed backups: \(check.stdout) \(check.stderr)")
    }
}
