import BlockIO
import Foundation
@testable import NBD
import Testing
import TestSupport

/// Real NBD clients against our server over a Unix socket.
@Suite(.serialized)
struct NBDInteropTests {
    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func nbdinfoListShowsExportsAndContexts() async throws {
        let dir = try TemporaryDirectory("nbd-list")
        try DiskModel.create(at: dir.file("a.raw"), size: 1 << 20)
        try DiskModel.create(at: dir.file("b.raw"), size: 2 << 20)
        let a = try FileExport(path: dir.file("a.raw"), name: "alpha", description: "first disk")
        let b = BitmapFileExport(base: try FileExport(path: dir.file("b.raw"), name: "beta"), bitmapName: "active", dirty: [])
        let out = try await withServer([a, b], in: dir) { server in try run("nbdinfo", ["--list", server.uri()]) }
        #expect(out.contains("export=\"alpha\""))
        #expect(out.contains("export=\"beta\""))
        #expect(out.contains("first disk"))
        #expect(out.contains("qemu:dirty-bitmap:active"))
        #expect(out.contains("base:allocation"))
        #expect(out.contains("export-size: 2097152"))
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func qemuIOWritesAndReadsPatterns() async throws {
        let dir = try TemporaryDirectory("nbd-qemu-io")
        try DiskModel.create(at: dir.file("disk.raw"), size: 16 << 20)
        let export = try FileExport(path: dir.file("disk.raw"), name: "disk")
        try await withServer([export], in: dir) { server in
            let uri = server.uri("disk")
            try run("qemu-io", ["-f", "raw", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0xcd 5000 3000",
                                "-c", "write -z 2M 128k", "-c", "write -P 0x11 -f 8M 4k", "-c", "flush", uri])
            let out = try run("qemu-io", ["-f", "raw", "-c", "read -P 0xab 1M 64k", "-c", "read -P 0xcd 5000 3000",
                                          "-c", "read -P 0 2M 128k", "-c", "read -P 0x11 8M 4k", "-c", "read -P 0 0 4096", uri])
            #expect(!out.contains("Pattern verification failed"))
            // A wrong pattern must be caught (the check itself is live).
            let bad = try runCommand("qemu-io", ["-f", "raw", "-c", "read -P 0xee 1M 4k", uri])
            #expect(bad.stdout.contains("Pattern verification failed") || !bad.succeeded)
        }
        // Through the server and straight from the file, the bytes agree.
        var model = DiskModel(size: 16 << 20)
        model.fill(0xab, at: 1 << 20, length: 65536)
        model.fill(0xcd, at: 5000, length: 3000)
        model.fill(0x11, at: 8 << 20, length: 4096)
        expectSame(try fileBytes(dir.file("disk.raw")), model.bytes, "the file behind the export")
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img")))
    func qemuImgConvertInAndOut() async throws {
        let dir = try TemporaryDirectory("nbd-convert")
        var rng = SeededGenerator(seed: 7)
        let size: UInt64 = 8 << 20
        var src = DiskModel(size: Int(size))
        src.randomize(at: 0, length: 300_000, using: &rng)
        src.randomize(at: 5 << 20, length: 1 << 20, using: &rng)
        try src.write(to: dir.file("src.raw"))
        try DiskModel.create(at: dir.file("disk.raw"), size: size)
        let export = try FileExport(path: dir.file("disk.raw"), name: "disk")
        try await withServer([export], in: dir) { server in
            // In: write the source image through NBD.
            try run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", dir.file("src.raw"), server.uri("disk")])
            // Out: read it back through NBD.
            try run("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.uri("disk"), dir.file("out.raw")])
        }
        expectSame(try fileBytes(dir.file("disk.raw")), src.bytes, "the export written through NBD")
        expectSame(try fileBytes(dir.file("out.raw")), src.bytes, "the copy read through NBD")
    }

    @Test(.enabled(if: ExternalTool.available("nbdcopy")))
    func nbdcopyBothWays() async throws {
        let dir = try TemporaryDirectory("nbd-nbdcopy")
        var rng = SeededGenerator(seed: 11)
        let size: UInt64 = 6 << 20
        var src = DiskModel(size: Int(size))
        src.randomize(at: 4096, length: 2 << 20, using: &rng)
        src.randomize(at: 4 << 20, length: 777, using: &rng)
        try src.write(to: dir.file("src.raw"))
        try DiskModel.create(at: dir.file("disk.raw"), size: size)
        let export = try FileExport(path: dir.file("disk.raw"), name: "d")
        try await withServer([export], in: dir) { server in
            try run("nbdcopy", [dir.file("src.raw"), server.uri("d")])
            try run("nbdcopy", [server.uri("d"), dir.file("out.raw")])
        }
        expectSame(try fileBytes(dir.file("disk.raw")), src.bytes, "the export written through NBD")
        expectSame(try fileBytes(dir.file("out.raw")), src.bytes, "the copy read through NBD")
    }

    @Test(.enabled(if: ExternalTool.available("nbdsh")))
    func nbdshScriptUsesStructuredRepliesAndBlockStatus() async throws {
        let dir = try TemporaryDirectory("nbd-nbdsh")
        try DiskModel.create(at: dir.file("disk.raw"), size: 4 << 20)
        let export = try FileExport(path: dir.file("disk.raw"), name: "disk")
        let script = #"""
        import nbd, sys
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        h.connect_uri(URI)
        assert h.can_meta_context("base:allocation")
        assert h.get_structured_replies_negotiated()
        assert h.get_size() == 4 * 1024 * 1024
        h.pwrite(b"\x5a" * 65536, 1048576)
        h.flush()
        assert h.pread(65536, 1048576) == b"\x5a" * 65536
        h.zero(65536, 1048576)
        assert h.pread(65536, 1048576) == bytes(65536)
        h.pwrite(b"tessera", 3 * 1048576, nbd.CMD_FLAG_FUA)
        assert h.pread(7, 3 * 1048576) == b"tessera"
        seen = []
        def cb(metacontext, offset, entries, err):
            seen.append((metacontext, offset, list(entries)))
        h.block_status(4 * 1024 * 1024, 0, cb)
        assert len(seen) == 1 and seen[0][0] == "base:allocation", seen
        entries = seen[0][2]
        assert sum(entries[0::2]) == 4 * 1024 * 1024, entries
        try:
            h.pread(4096, 4 * 1024 * 1024 - 100)
            raise SystemExit("read past the end succeeded")
        except nbd.Error as e:
            assert e.errno == 22 or "Invalid" in str(e), e
        h.shutdown()
        print("ok")
        """#
        let out = try await withServer([export], in: dir) { server -> String in
            try ("URI = \"\(server.uri("disk"))\"\n" + script).write(toFile: dir.file("t.py"), atomically: true, encoding: .utf8)
            // nbdsh runs `env python3`; the system one has the nbd module (python3-libnbd).
            return try run("nbdsh", ["-n", "-c", "exec(open('\(dir.file("t.py"))').read())"],
                    environment: ["PATH": "/usr/bin:/bin"])
        }
        #expect(out.contains("ok"))
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func nbdinfoMapShowsAllocation() async throws {
        let dir = try TemporaryDirectory("nbd-map")
        var disk = DiskModel(size: 8 << 20)
        disk.fill(1, at: 1 << 20, length: 65536)
        disk.fill(2, at: 6 << 20, length: 4096)
        try disk.write(to: dir.file("disk.raw"))
        let export = try FileExport(path: dir.file("disk.raw"), name: "disk")
        let truth = try export.file.dataRanges(in: ByteRange(offset: 0, length: 8 << 20))
        let out = try await withServer([export], in: dir) { server in try run("nbdinfo", ["--map", server.uri("disk")]) }
        let data = parseMap(out).filter { $0.flags == 0 }.map { ByteRange(offset: $0.offset, length: $0.length) }
        #expect(data.coalesced() == truth.coalesced())
        #expect(!truth.isEmpty)
        #expect(truth.contains { $0.contains(ByteRange(offset: 1 << 20, length: 65536)) })
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func nbdinfoMapShowsDirtyBitmap() async throws {
        let dir = try TemporaryDirectory("nbd-bitmap")
        try DiskModel.create(at: dir.file("disk.raw"), size: 64 << 20)
        let dirty = [ByteRange(offset: 1 << 20, length: 65536), ByteRange(offset: 10 << 20, length: 3 * 65536),
                     ByteRange(offset: (64 << 20) - 65536, length: 65536)]
        let export = BitmapFileExport(base: try FileExport(path: dir.file("disk.raw"), name: ""), bitmapName: "b0", dirty: dirty)
        let out = try await withServer([export], in: dir) { server in
            try run("nbdinfo", ["--map=qemu:dirty-bitmap:b0", server.uri()])
        }
        let rows = parseMap(out)
        #expect(rows.filter { $0.flags & 1 != 0 }.map { ByteRange(offset: $0.offset, length: $0.length) }.coalesced() == dirty)
        #expect(rows.reduce(0) { $0 + $1.length } == 64 << 20)
        #expect(out.contains("dirty"))
    }

    /// nbdinfo --map rows: offset, length, flags, description.
    private func parseMap(_ text: String) -> [(offset: UInt64, length: UInt64, flags: UInt32)] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 3, let o = UInt64(f[0]), let l = UInt64(f[1]), let fl = UInt32(f[2]) else { return nil }
            return (o, l, fl)
        }
    }
}
