import BlockIO
import Foundation
@testable import NBD
import Testing
import TestSupport

/// Our blocking client against qemu-nbd (the reference server) and against our own server.
@Suite(.serialized)
struct NBDClientTests {
    /// Starts a program in the background and kills it (by PID) when done. posix_spawn and
    /// waitpid rather than Foundation's Process, whose waitUntilExit can miss the child's exit.
    final class Background {
        let pid: pid_t
        private var reaped = false

        init(_ program: String, _ arguments: [String]) throws {
            guard let path = ExternalTool.path(program) else {
                throw ToolFailure(description: "\(program) is not installed: apt-get install \(ExternalTool.package(for: program))")
            }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
            defer { for a in argv { free(a) } }
            var child: pid_t = 0
            let rc = posix_spawn(&child, path, &actions, nil, argv, environ)
            guard rc == 0 else { throw ToolFailure(description: "cannot start \(program): error \(rc)") }
            pid = child
        }

        func stop() {
            guard !reaped else { return }
            reaped = true
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }

        deinit { stop() }
    }

    /// Waits until a Unix socket accepts connections (the server is up), or fails after many tries.
    static func waitForSocket(_ path: String) throws {
        for _ in 0..<500 {
            if let s = try? NBDSocket.connect(.unix(path: path)) {
                s.close()
                return
            }
            usleep(20_000)
        }
        throw ToolFailure(description: "no NBD server appeared at \(path)")
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io", "qemu-nbd")))
    func readsDirtyBitmapAndDataFromQemuNbd() throws {
        let dir = try TemporaryDirectory("nbd-qemu-nbd")
        let image = dir.file("disk.qcow2"), socket = dir.file("q.sock")
        try run("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"])
        try run("qemu-img", ["bitmap", "--add", image, "b0"])
        try run("qemu-io", ["-f", "qcow2", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0xcd 10M 4k",
                            "-c", "write -P 0xef 20971620 10", "-c", "write -P 0x01 63M 1M", image])
        try run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", image, dir.file("expected.raw")])
        let server = try Background("qemu-nbd", ["-r", "-f", "qcow2", "-B", "b0", "-k", socket, "-t", image])
        defer { server.stop() }
        try Self.waitForSocket(socket)

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

        let expected = try DurableFile.read(dir.file("expected.raw"))
        // One call larger than qemu-nbd's 32 MiB maximum: the client splits it.
        #expect(try client.read(offset: 0, length: 48 << 20) == Array(expected[0..<(48 << 20)]))
        var got = [UInt8](repeating: 0xFF, count: expected.count)
        let step = 4 << 20
        try got.withUnsafeMutableBytes { buffer in
            for offset in stride(from: 0, to: expected.count, by: step) {
                try client.read(offset: UInt64(offset), length: UInt32(step),
                                into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<offset + step]))
            }
        }
        #expect(got == expected)
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-nbd")))
    func listsQemuNbdExports() throws {
        let dir = try TemporaryDirectory("nbd-qemu-list")
        try run("qemu-img", ["create", "-q", "-f", "raw", dir.file("d.raw"), "1M"])
        let server = try Background("qemu-nbd", ["-r", "-f", "raw", "-x", "named", "-k", dir.file("q.sock"), "-t", dir.file("d.raw")])
        defer { server.stop() }
        try Self.waitForSocket(dir.file("q.sock"))
        #expect(try NBDClient.listExports(NBDURI(endpoint: .unix(path: dir.file("q.sock")))) == ["named"])
        #expect(throws: NBDError.self) { try NBDClient.connect(NBDURI(endpoint: .unix(path: dir.file("q.sock")), exportName: "other")) }
    }

    @Test func roundTripAgainstOurServer() async throws {
        let dir = try TemporaryDirectory("nbd-client-own")
        try makeImage(dir.file("d.raw"), size: 8 << 20)
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
