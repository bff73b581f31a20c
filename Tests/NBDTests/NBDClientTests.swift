import BlockIO
import Foundation
@testable import NBD
import Testing
import TestSupport

/// Our blocking client against qemu-nbd (the reference server) and against our own server.
@Suite(.serialized)
struct NBDClientTests {
    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io", "qemu-nbd")))
    func readsDirtyBitmapAndDataFromQemuNbd() throws {
        let dir = try TemporaryDirectory("nbd-qemu-nbd")
        let image = dir.file("disk.qcow2"), socket = dir.file("q.sock")
        try run("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"])
        try run("qemu-img", ["bitmap", "--add", image, "b0"])
        try run("qemu-io", ["-f", "qcow2", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0xcd 10M 4k",
                            "-c", "write -P 0xef 20971620 10", "-c", "write -P 0x01 63M 1M", image])
        try run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, dir.file("expected.raw")])
        let server = try ChildProcess.qemuNBD(["-r", "-f", "qcow2", "-B", "b0", "-t", image], socket: socket)
        // A read-only export: SIGKILL is safe, and qemu-nbd -t may linger after SIGTERM.
        defer { server.kill() }

        let client = try NBDClient.connect(NBDURI(parsing: "nbd+unix:///?socket=\(socket)"),
                                           metaContexts: ["qemu:dirty-bitmap:b0", "base:allocation", "x-none:thing"],
                                           timeoutSeconds: 120)
        defer { client.close() }
        #expect(client.exportSize == 64 << 20)
        #expect(client.isReadOnly)
        #expect(Set(client.negotiatedContexts) == ["qemu:dirty-bitmap:b0", "base:allocation"])

        let map = try client.blockStatus(context: "qemu:dirty-bitmap:b0", range: ByteRange(offset: 0, length: client.exportSize))
        #expect(map.reduce(0) { $0 + $1.range.length } == client.exportSize)
        let dirty = map.filter { $0.flags & 1 != 0 }.map(\.range)
        // Writes rounded outward to the bitmap's 64 KiB granularity.
        #expect(dirty == [ByteRange(offset: 1 << 20, length: 65536), ByteRange(offset: 10 << 20, length: 65536),
                                      ByteRange(offset: 20 << 20, length: 65536), ByteRange(offset: 63 << 20, length: 1 << 20)])

        let expected = try fileBytes(dir.file("expected.raw"))
        // One call larger than qemu-nbd's 32 MiB maximum: the client splits it.
        expectSame(try client.read(offset: 0, length: 48 << 20), expected[0..<(48 << 20)], "one read larger than qemu-nbd's maximum")
        var got = [UInt8](repeating: 0xFF, count: expected.count)
        let step = 4 << 20
        try got.withUnsafeMutableBytes { buffer in
            for offset in stride(from: 0, to: expected.count, by: step) {
                try client.read(offset: UInt64(offset), length: UInt32(step),
                                into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + step]))
            }
        }
        expectSame(got, expected, "the export read in 4 MiB pieces")
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-nbd")))
    func listsQemuNbdExports() throws {
        let dir = try TemporaryDirectory("nbd-qemu-list")
        try run("qemu-img", ["create", "-q", "-f", "raw", dir.file("d.raw"), "1M"])
        let server = try ChildProcess.qemuNBD(["-r", "-f", "raw", "-x", "named", "-t", dir.file("d.raw")], socket: dir.file("q.sock"))
        defer { server.kill() }
        #expect(try NBDClient.listExports(NBDURI(endpoint: .unix(path: dir.file("q.sock")))) == ["named"])
        #expect(throws: NBDError.self) { try NBDClient.connect(NBDURI(endpoint: .unix(path: dir.file("q.sock")), exportName: "other")) }
    }

    @Test func roundTripAgainstOurServer() async throws {
        let dir = try TemporaryDirectory("nbd-client-own")
        try DiskModel.create(at: dir.file("d.raw"), size: 8 << 20)
        let export = BitmapFileExport(base: try FileExport(path: dir.file("d.raw"), name: "d"), bitmapName: "b",
                                      dirty: [ByteRange(offset: 65536, length: 65536)])
        let ro = MemoryExport(name: "ro", size: 4096, readOnly: true)
        try await withServer([export, ro], in: dir) { server in
            #expect(try NBDClient.listExports(NBDURI(parsing: server.uri())) == ["d", "ro"])
            let c = try NBDClient.connect(NBDURI(parsing: server.uri("d")), metaContexts: ["qemu:dirty-bitmap:b", "base:allocation"])
            defer { c.close() }
            #expect(c.exportSize == 8 << 20 && c.structuredReplies && !c.isReadOnly)
            #expect(c.negotiatedContexts == ["base:allocation", "qemu:dirty-bitmap:b"])
            var rng = SeededGenerator(seed: 5)
            let data = rng.bytes(300_000)
            try c.write(offset: 12345, data: data, fua: true)
            try c.flush()
            #expect(try c.read(offset: 12345, length: UInt32(data.count)) == data)
            try c.writeZeroes(offset: 12345, length: 1000)
            try c.trim(offset: 20000, length: 1000)
            let back = try c.read(offset: 12345, length: UInt32(data.count))
            #expect(back[0..<1000].allSatisfy { $0 == 0 } && back[7655..<8655].allSatisfy { $0 == 0 })
            #expect(back[1000..<7655] == data[1000..<7655] && back[8655...] == data[8655...])
            #expect(try c.blockStatus(context: "qemu:dirty-bitmap:b", offset: 0, length: 1 << 20)
                    == [.init(length: 65536, flags: 0), .init(length: 65536, flags: 1), .init(length: (1 << 20) - 131072, flags: 0)])
            // An error reply leaves the connection usable.
            #expect { try c.read(offset: (8 << 20) - 10, length: 20) } throws: { ($0 as? NBDError)?.code == .invalid }
            #expect(try c.read(offset: 0, length: 4) == [0, 0, 0, 0])
            #expect(throws: NBDError.self) { try c.blockStatus(context: "qemu:dirty-bitmap:other", offset: 0, length: 1) }

            let r = try NBDClient.connect(NBDURI(parsing: server.uri("ro")))
            defer { r.close() }
            #expect(r.isReadOnly)
            #expect { try r.write(offset: 0, data: [1]) } throws: { ($0 as? NBDError)?.code == .permission }
        }
    }

    @Test func clientTimeoutTurnsASilentServerIntoAnError() throws {
        let dir = try TemporaryDirectory("nbd-silent")
        let path = dir.file("silent.sock")
        // A listener that never accepts: the kernel completes the connection, nobody speaks.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0 && listen(fd, 4) == 0)
        #expect {
            try NBDClient.connect(NBDURI(endpoint: .unix(path: path)), timeoutSeconds: 1)
        } throws: { ($0 as? NBDError)?.message.contains("in time") == true }
    }

    @Test func tcpEndpointWorks() async throws {
        let dir = try TemporaryDirectory("nbd-tcp")
        let export = MemoryExport(name: "", size: 65536)
        let server = NBDServer(provider: NBDExportSet([export]), threads: 2)
        do {
            let port = try await server.start(host: "127.0.0.1", port: 0)
            let c = try NBDClient.connect(NBDURI(parsing: "nbd://127.0.0.1:\(port)/"))
            try c.write(offset: 10, data: [1, 2, 3])
            #expect(try c.read(offset: 9, length: 5) == [0, 1, 2, 3, 0])
            c.close()
        } catch {
            try? await server.shutdown()
            throw error
        }
        try await server.shutdown()
        _ = dir
    }
}
