import BlockIO
import Foundation
import Testing
import TestSupport

/// Issue 5's main promise, end to end with real clients: the filter serves a disk, qemu-io
/// writes, nightly backups read only the changed extents, and every snapshot restores byte
/// for byte equal to the disk at its checkpoint.
struct NightlyBackupTests {
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func incrementalsReadOnlyChangesAndEverySnapshotRestoresExactly() throws {
        let dir = try TemporaryDirectory("nightly")
        let size = 48 << 20
        let diskPath = dir.file("disk.raw")
        var rng = SeededGenerator(seed: 20261122)
        // A disk with some data and holes.
        var model = DiskModel(size: size)
        model.randomize(at: 5 << 20, length: 3 << 20, using: &rng)
        try model.write(to: diskPath)

        let filter = try FilterProcess.started(directory: dir, diskName: "vm1", diskPath: diskPath)
        defer { filter.stop() }
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])

        var expected: [(snapshot: String, bytes: [UInt8])] = []
        let first = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "vm1", "--filter", filter.controlPath, "--json"]))
        #expect(first["mode"] as? String == "full")
        #expect((first["full_reason"] as? String)?.contains("no earlier snapshot") == true)
        expected.append((first["snapshot"] as! String, model.bytes))

        for night in 1...3 {
            let writes = randomWrites(8 + night * 4, maxPages: 16, diskSize: size, rng: &rng)
            try filter.write(writes)
            model.resetLog()
            for w in writes { model.fill(w.value, at: UInt64(w.offset), length: UInt64(w.length)) }

            let s = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "vm1", "--filter", filter.controlPath, "--json"]))
            #expect(s["mode"] as? String == "cbt", "night \(night): \(s)")
            // Read exactly the 64 KiB blocks the writes touched (chunk = granularity = 64 KiB).
            let blocks = model.loggedBlocks
            #expect(s["bytes_read"] as? Int == blocks.count * 65536, "night \(night): read \(s["bytes_read"] ?? "?") for \(blocks.count) blocks")
            expected.append((s["snapshot"] as! String, model.bytes))
        }

        // Every snapshot restores byte for byte equal to the disk at its checkpoint, sparse.
        for (i, e) in expected.enumerated() {
            let target = dir.file("restore-\(i).raw")
            try Tessera.ok(["restore", "--repo", repo, e.snapshot, "--to", target])
            let restored = try [UInt8](Data(contentsOf: URL(fileURLWithPath: target)))
            expectSame(restored, e.bytes, "snapshot \(i) (\(e.snapshot)) against the disk at its checkpoint")
            var st = stat()
            stat(target, &st)
            #expect(Int(st.st_blocks) * 512 < size / 2, "the restore of snapshot \(i) is not sparse")
        }
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func onlyChangedRestoreWritesOnlyDifferingChunksAndDiffNamesThem() throws {
        let dir = try TemporaryDirectory("onlychanged")
        let diskPath = dir.file("disk.raw")
        var rng = SeededGenerator(seed: 77)
        var disk = DiskModel(size: 16 << 20)
        disk.randomize(at: 1 << 20, length: 2 << 20, using: &rng)
        try disk.write(to: diskPath)
        let filter = try FilterProcess.started(directory: dir, diskName: "d", diskPath: diskPath)
        defer { filter.stop() }
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        let a = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath, "--json"]))["snapshot"] as! String
        let old = disk
        try filter.write([(8 << 20, 4096, 0x11), (12 << 20, 65536, 0x22)])
        disk.fill(0x11, at: 8 << 20, length: 4096)
        disk.fill(0x22, at: 12 << 20, length: 65536)
        let b = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.controlPath, "--json"]))["snapshot"] as! String

        let diff = try Tessera.ok(["diff", "--repo", repo, a, b, "--json"])
        let ranges = try JSONSerialization.jsonObject(with: Data(diff.stdout.utf8)) as! [[String: Int]]
        #expect(ranges.map { [$0["offset"]!, $0["length"]!] } == [[8 << 20, 65536], [12 << 20, 65536]])

        // Put the old disk in place, then bring it forward to b writing only what differs.
        let target = dir.file("target.raw")
        try old.write(to: target)
        let r = try Tessera.summary(try Tessera.ok(["restore", "--repo", repo, b, "--to", target, "--only-changed", "--json"]))
        #expect(r["chunks_written"] as? Int == 2)
        expectSame(try fileBytes(diskPath), disk.bytes, "the disk written through the filter")
        expectSame(try fileBytes(target), disk.bytes, "the target brought forward to b")
    }
}
