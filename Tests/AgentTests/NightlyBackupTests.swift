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
        var model = try DiskModel.create(at: diskPath, size: size, data: 3 << 20, at: 5 << 20, rng: &rng)

        let filter = try FilterProcess(directory: dir.path, disk: "vm1", path: diskPath)
        defer { filter.stop() }
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])

        var expected: [(snapshot: String, bytes: [UInt8])] = []
        let first = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "vm1", "--filter", filter.control, "--json"]))
        #expect(first["mode"] as? String == "full")
        #expect((first["full_reason"] as? String)?.contains("no earlier snapshot") == true)
        expected.append((first["snapshot"] as! String, model.bytes))

        for night in 1...3 {
            let writes = randomWrites(8 + night * 4, maxPages: 16, diskSize: size, rng: &rng)
            try filter.write(writes)
            for w in writes { model.fill(offset: w.offset, length: w.length, with: w.value) }

            let s = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "vm1", "--filter", filter.control, "--json"]))
            #expect(s["mode"] as? String == "cbt", "night \(night): \(s)")
            // Read exactly the 64 KiB blocks the writes touched (chunk = granularity = 64 KiB).
            let blocks = DiskModel.blocks(of: writes.map { ($0.offset, $0.length) })
            #expect(s["bytes_read"] as? Int == blocks.count * 65536, "night \(night): read \(s["bytes_read"] ?? "?") for \(blocks.count) blocks")
            expected.append((s["snapshot"] as! String, model.bytes))
        }

        // Every snapshot restores byte for byte equal to the disk at its checkpoint, sparse.
        for (i, e) in expected.enumerated() {
            let target = dir.file("restore-\(i).raw")
            try Tessera.ok(["restore", "--repo", repo, e.snapshot, "--to", target])
            let restored = try [UInt8](Data(contentsOf: URL(fileURLWithPath: target)))
            #expect(restored == e.bytes, "snapshot \(i) (\(e.snapshot)) differs from the disk at its checkpoint")
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
        let disk = try BlockFile(path: diskPath, mode: .createReadWrite)
        try disk.truncate(to: 16 << 20)
        try disk.write(rng.bytes(2 << 20), at: 1 << 20)
        let filter = try FilterProcess(directory: dir.path, disk: "d", path: diskPath)
        defer { filter.stop() }
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        let a = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.control, "--json"]))["snapshot"] as! String
        let old = try [UInt8](Data(contentsOf: URL(fileURLWithPath: diskPath)))
        try filter.write([(8 << 20, 4096, 0x11), (12 << 20, 65536, 0x22)])
        let b = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--filter", filter.control, "--json"]))["snapshot"] as! String

        let diff = try Tessera.ok(["diff", "--repo", repo, a, b, "--json"])
        let ranges = try JSONSerialization.jsonObject(with: Data(diff.stdout.utf8)) as! [[String: Int]]
        #expect(ranges.map { [$0["offset"]!, $0["length"]!] } == [[8 << 20, 65536], [12 << 20, 65536]])

        // Put the old disk in place, then bring it forward to b writing only what differs.
        let target = dir.file("target.raw")
        try Data(old).write(to: URL(fileURLWithPath: target))
        let r = try Tessera.summary(try Tessera.ok(["restore", "--repo", repo, b, "--to", target, "--only-changed", "--json"]))
        #expect(r["chunks_written"] as? Int == 2)
        let now = try [UInt8](Data(contentsOf: URL(fileURLWithPath: diskPath)))
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: target))) == now)
    }
}
