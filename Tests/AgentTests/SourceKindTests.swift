import BlockIO
import Foundation
import Testing
import TestSupport

/// The other sources of change: a real QEMU dirty bitmap over NBD, a full scan of a raw file,
/// and VMDK descriptors with flat extents (in and out).
struct SourceKindTests {
    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io", "qemu-nbd")))
    func qemuDirtyBitmapOverNBDMatchesQemuImgConvert() throws {
        let dir = try TemporaryDirectory("qemubitmap")
        let qcow = dir.file("vm.qcow2")
        let repo = dir.file("repo")
        try runCommand("qemu-img", ["create", "-q", "-f", "qcow2", qcow, "32M"])
        try runCommand("qemu-io", ["-f", "qcow2", "-c", "write -P 0x31 1M 2M", "-c", "write -P 0x32 20M 64k", qcow])
        try Tessera.ok(["init", "--repo", repo])

        func backUp(bitmap: String?) throws -> [String: Any] {
            let sock = dir.file("q.sock")
            let nbd = try ChildProcess.qemuNBD(["-r", "-f", "qcow2", "-t"] + (bitmap.map { ["-B", $0] } ?? []) + [qcow], socket: sock)
            defer { nbd.kill(); unlink(sock) }
            var args = ["backup", "--repo", repo, "--disk", "vm", "--nbd", "nbd+unix:///?socket=\(sock)", "--json"]
            if let bitmap { args += ["--bitmap", bitmap] }
            return try Tessera.summary(try Tessera.ok(args))
        }

        // Night 1: no bitmap yet, a full read. Then the libvirt way: a bitmap records from here.
        let first = try backUp(bitmap: nil)
        #expect(first["mode"] as? String == "full")
        try runCommand("qemu-img", ["bitmap", "--add", qcow, "b0"])
        try runCommand("qemu-io", ["-f", "qcow2", "-c", "write -P 0x41 4M 4k", "-c", "write -P 0x42 30M 100k", qcow])
        let second = try backUp(bitmap: "b0")
        #expect(second["mode"] as? String == "nbd-bitmap", "\(second)")
        // 4 KiB at 4M → one 64 KiB block; 100 KiB at 30M → two blocks.
        #expect(second["bytes_read"] as? Int == 3 * 65536)

        let restored = dir.file("restored.raw"), reference = dir.file("reference.raw")
        try Tessera.ok(["restore", "--repo", repo, second["snapshot"] as! String, "--to", restored])
        try runCommand("qemu-img", ["convert", "-O", "raw", qcow, reference])
        #expect(try Data(contentsOf: URL(fileURLWithPath: restored)) == Data(contentsOf: URL(fileURLWithPath: reference)))
    }

    /// `--bitmap NAME` that the server does not offer is an error that says what the server
    /// did negotiate and how to list its bitmaps, never a quiet full read.
    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-nbd")))
    func aBitmapTheServerDoesNotOfferIsAnError() throws {
        let dir = try TemporaryDirectory("qemubitmap-missing")
        let qcow = dir.file("vm.qcow2"), repo = dir.file("repo"), sock = dir.file("q.sock")
        try runCommand("qemu-img", ["create", "-q", "-f", "qcow2", qcow, "8M"])
        try runCommand("qemu-img", ["bitmap", "--add", qcow, "b0"])
        try Tessera.ok(["init", "--repo", repo])
        let nbd = try ChildProcess.qemuNBD(["-r", "-f", "qcow2", "-t", "-B", "b0", qcow], socket: sock)
        defer { nbd.kill() }
        let uri = "nbd+unix:///?socket=\(sock)"
        let r = try Tessera.run(["backup", "--repo", repo, "--disk", "vm", "--nbd", uri, "--bitmap", "nosuch"])
        #expect(r.status == 1, "a missing bitmap must fail the backup, not read everything: \(r.stdout) \(r.stderr)")
        for fragment in ["qemu:dirty-bitmap:nosuch", "base:allocation", "nbdinfo", "--full"] {
            #expect(r.stderr.contains(fragment), "the error does not mention \(fragment): \(r.stderr)")
        }
        #expect(try Tessera.snapshotIDs(repo: repo).isEmpty)
        // The bitmap it does offer works, and --full reads everything whatever the bitmap.
        try Tessera.ok(["backup", "--repo", repo, "--disk", "vm", "--nbd", uri, "--bitmap", "b0"])
        try Tessera.ok(["backup", "--repo", repo, "--disk", "vm", "--nbd", uri, "--bitmap", "nosuch", "--full"])
    }

    @Test func fullScanSkipsHolesAndStoresOnlyNewChunks() throws {
        let dir = try TemporaryDirectory("scan")
        let path = dir.file("disk.raw"), repo = dir.file("repo")
        var rng = SeededGenerator(seed: 5)
        var disk = DiskModel(size: 64 << 20)
        disk.randomize(at: 10 << 20, length: 1 << 20, using: &rng)
        try disk.write(to: path)
        try Tessera.ok(["init", "--repo", repo])
        let a = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--source", path, "--json"]))
        #expect(a["mode"] as? String == "scan")
        #expect((a["bytes_read"] as! Int) < 2 << 20, "holes must not be read: \(a)")
        #expect(a["chunks_new"] as? Int == 16)
        disk.randomize(at: 10 << 20, length: 4096, using: &rng)
        try disk.write(to: path)
        let b = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--source", path, "--json"]))
        #expect(b["chunks_new"] as? Int == 1)
        #expect(b["chunks_reused"] as? Int == 15)
        let out = dir.file("out.raw")
        try Tessera.ok(["restore", "--repo", repo, "latest", "--disk", "d", "--to", out])
        expectSame(try fileBytes(out), disk.bytes, "the restore of the scanned disk")
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io")))
    func vmdkFlatSourceAndVMDKRestoreAreReadByQemu() throws {
        let dir = try TemporaryDirectory("vmdk")
        let vmdk = dir.file("vm.vmdk"), repo = dir.file("repo")
        try runCommand("qemu-img", ["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", vmdk, "24M"])
        try runCommand("qemu-io", ["-f", "vmdk", "-c", "write -P 0x61 3M 1M", "-c", "write -P 0x62 23M 512k", vmdk])
        try Tessera.ok(["init", "--repo", repo])
        let s = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "vm", "--source", vmdk, "--json"]))
        let out = dir.file("restored.vmdk")
        try Tessera.ok(["restore", "--repo", repo, s["snapshot"] as! String, "--to", out, "--format", "vmdk"])
        let info = try runCommand("qemu-img", ["info", out])
        #expect(info.stdout.contains("file format: vmdk"))
        let compare = try runCommand("qemu-img", ["compare", "-f", "vmdk", "-F", "vmdk", vmdk, out])
        #expect(compare.succeeded, "qemu-img compare: \(compare.stdout) \(compare.stderr)")
    }
}
