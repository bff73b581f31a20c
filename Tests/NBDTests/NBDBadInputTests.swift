import BlockIO
import Foundation
import NIOCore
@testable import NBD
import Synchronization
import Testing
import TestSupport

/// A hand-driven connection for sending malformed bytes to the live server.
final class RawConnection {
    let socket: NBDSocket

    init(_ path: String) throws {
        socket = try NBDSocket.connect(.unix(path: path))
        // A safety net so a server bug shows up as a failure, not a hung test run.
        socket.setReceiveTimeout(seconds: 60)
    }

    func send(_ bytes: [UInt8]) throws { try socket.send(bytes) }
    func receive(_ n: Int) throws -> [UInt8] { try socket.receive(n) }

    /// Reads the greeting, sends flags, optionally negotiates structured replies, then GO.
    func handshake(export: String, structured: Bool = false) throws {
        _ = try receive(18)
        try send(ClientMessage.flags())
        if structured {
            try send(ClientMessage.option(8))
            _ = try receive(20)
        }
        try send(ClientMessage.option(7, ClientMessage.go(export)))
        while true {
            var h = ByteBuffer(bytes: try receive(20))
            guard let (_, _, type, length) = h.readMultipleIntegers(as: (UInt64, UInt32, UInt32, UInt32).self) else {
                throw CommandError(description: "short option reply")
            }
            _ = try receive(Int(length))
            if type == 1 { return }
            if type & 0x8000_0000 != 0 { throw CommandError(description: "GO refused: \(type)") }
        }
    }

    /// A simple reply's (error, cookie).
    func simpleReply() throws -> (error: UInt32, cookie: UInt64) {
        var b = ByteBuffer(bytes: try receive(16))
        guard let (magic, error, cookie) = b.readMultipleIntegers(as: (UInt32, UInt32, UInt64).self), magic == 0x6744_6698 else {
            throw CommandError(description: "not a simple reply")
        }
        return (error, cookie)
    }

    /// True when the server closed the connection (EOF before any further byte).
    func serverClosed() -> Bool {
        do {
            while true { _ = try receive(1) }
        } catch let e as NBDError {
            return e.message.contains("closed")
        } catch {
            return false
        }
    }

    func close() { socket.close() }
}

/// Bad input against the live server: after each, a second client still works.
@Suite(.serialized)
struct NBDBadInputTests {
    /// A second, well-behaved client: write, read back, compare.
    private func healthy(_ server: TestServer, _ tag: UInt8) throws {
        let c = try NBDClient.connect(NBDURI(parsing: server.uri("disk")), metaContexts: ["base:allocation"])
        defer { c.close() }
        let data = [UInt8](repeating: tag, count: 4096)
        try c.write(offset: UInt64(tag) * 4096, data: data)
        #expect(try c.read(offset: UInt64(tag) * 4096, length: 4096) == data)
    }

    private func withDisk(_ label: String, _ body: (TestServer) async throws -> Void) async throws {
        let dir = try TemporaryDirectory(label)
        try DiskModel.create(at: dir.file("disk.raw"), size: 4 << 20)
        try await withServer([try FileExport(path: dir.file("disk.raw"), name: "disk")], in: dir, body)
    }

    @Test func garbageAndTruncatedHandshakes() async throws {
        try await withDisk("nbd-bad-hs") { server in
            var rng = SeededGenerator(seed: 17)
            // Random garbage instead of client flags and options.
            for i in 0..<5 {
                let c = try RawConnection(server.socketPath)
                _ = try c.receive(18)
                try c.send(rng.bytes(64 + i * 100))
                #expect(c.serverClosed())
            }
            // Truncated: half the flags, then hang up; a GO header without its payload, then hang up.
            for partial in [Array(ClientMessage.flags().prefix(2)),
                            ClientMessage.flags() + Array(ClientMessage.option(7, ClientMessage.go("disk")).prefix(20))] {
                let c = try RawConnection(server.socketPath)
                try c.send(partial)
                c.close()
            }
            // Wrong option magic.
            let c = try RawConnection(server.socketPath)
            _ = try c.receive(18)
            var bad = ClientMessage.option(7, ClientMessage.go("disk"))
            bad[3] = 0
            try c.send(ClientMessage.flags() + bad)
            #expect(c.serverClosed())
            // A client that never speaks does not block others.
            let silent = try RawConnection(server.socketPath)
            try healthy(server, 1)
            silent.close()
        }
    }

    @Test func wrongRequestMagicClosesOnlyThatConnection() async throws {
        try await withDisk("nbd-bad-magic") { server in
            let c = try RawConnection(server.socketPath)
            try c.handshake(export: "disk")
            try c.send(ClientMessage.request(type: 0, length: 512, magic: 0xDEAD_BEEF))
            #expect(c.serverClosed())
            try healthy(server, 2)
        }
    }

    @Test func requestsPastTheEndAndOversizedReadsGetEINVALAndTheConnectionLives() async throws {
        try await withDisk("nbd-bad-range") { server in
            let c = try RawConnection(server.socketPath)
            try c.handshake(export: "disk")
            try c.send(ClientMessage.request(type: 0, cookie: 1, offset: (4 << 20) - 100, length: 200))
            #expect(try c.simpleReply() == (22, 1))
            try c.send(ClientMessage.request(type: 0, cookie: 2, offset: 0, length: UInt32.max))
            #expect(try c.simpleReply() == (22, 2))
            try c.send(ClientMessage.request(type: 4, cookie: 3, offset: UInt64.max - 1, length: 2))
            #expect(try c.simpleReply() == (22, 3))
            try c.send(ClientMessage.request(type: 1, cookie: 4, offset: 4 << 20, length: 1, payload: [7]))
            #expect(try c.simpleReply() == (22, 4), "a write past the end is refused, its payload consumed")
            try c.send(ClientMessage.request(type: 99, cookie: 5))
            #expect(try c.simpleReply() == (22, 5))
            try c.send(ClientMessage.request(type: 0, cookie: 6, offset: 0, length: 8))
            #expect(try c.simpleReply() == (0, 6))
            #expect(try c.receive(8) == [UInt8](repeating: 0, count: 8))
            c.close()
            try healthy(server, 3)
        }
    }

    @Test func hugeWriteGetsEINVALThenTheConnectionCloses() async throws {
        try await withDisk("nbd-bad-write") { server in
            let c = try RawConnection(server.socketPath)
            try c.handshake(export: "disk")
            try c.send(ClientMessage.request(type: 1, cookie: 9, offset: 0, length: 0x8000_0000) + [1, 2, 3])
            #expect(try c.simpleReply() == (22, 9))
            #expect(c.serverClosed())
            try healthy(server, 4)
        }
    }

    @Test func clientVanishingMidRequestDoesNotDisturbOthers() async throws {
        try await withDisk("nbd-vanish") { server in
            // A write whose payload never fully arrives.
            let a = try RawConnection(server.socketPath)
            try a.handshake(export: "disk")
            try a.send(ClientMessage.request(type: 1, cookie: 1, offset: 0, length: 1 << 20) + [UInt8](repeating: 9, count: 1000))
            a.close()
            // Many reads in flight, then gone without reading a single reply.
            let b = try RawConnection(server.socketPath)
            try b.handshake(export: "disk", structured: true)
            var burst: [UInt8] = []
            for i in 0..<200 { burst += ClientMessage.request(type: 0, cookie: UInt64(i), offset: 0, length: 1 << 20) }
            try b.send(burst)
            b.close()
            try healthy(server, 5)
            try healthy(server, 6)
        }
    }

    @Test func disconnectFinishesInFlightRequestsFirst() async throws {
        try await withDisk("nbd-disc") { server in
            let c = try RawConnection(server.socketPath)
            try c.handshake(export: "disk")
            var batch: [UInt8] = []
            for i in 0..<20 {
                batch += ClientMessage.request(type: 1, cookie: UInt64(i), offset: UInt64(i) * 4096, length: 4096,
                                               payload: [UInt8](repeating: UInt8(i + 1), count: 4096))
            }
            batch += ClientMessage.request(type: 2, cookie: 99)
            try c.send(batch)
            var cookies: Set<UInt64> = []
            for _ in 0..<20 {
                let r = try c.simpleReply()
                #expect(r.error == 0)
                cookies.insert(r.cookie)
            }
            #expect(cookies == Set(0..<20))
            #expect(c.serverClosed())
            let check = try NBDClient.connect(NBDURI(parsing: server.uri("disk")))
            defer { check.close() }
            for i in 0..<20 {
                #expect(try check.read(offset: UInt64(i) * 4096, length: 4096) == [UInt8](repeating: UInt8(i + 1), count: 4096))
            }
        }
    }
}

/// An export whose read at offset 0 waits until a write elsewhere happened, then until the
/// test opens `gate`: it only completes if the server runs a connection's requests
/// concurrently, and the test decides when (so reply order is not left to thread timing).
final class RendezvousExport: NBDExport {
    let info = NBDExportInfo(name: "r", size: 1 << 20, metaContexts: [])
    private let writeSeen = DispatchSemaphore(value: 0)
    let gate = DispatchSemaphore(value: 0)
    let order = Mutex<[String]>([])

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if offset == 0 {
            guard writeSeen.wait(timeout: .now() + 60) == .success else {
                throw NBDError(.io, "the write never ran while this read was in flight: requests were serialized")
            }
            guard gate.wait(timeout: .now() + 60) == .success else { throw NBDError(.io, "gate never opened") }
        }
        order.withLock { $0.append("read \(offset)") }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {
        order.withLock { $0.append("write \(offset)") }
        writeSeen.signal()
    }

    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {}
    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {}
    func flush() throws {}
    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] { [] }
}

@Suite(.serialized)
struct NBDConcurrencyTests {
    @Test func severalConnectionsWriteAtOnceAndEveryByteLands() async throws {
        let dir = try TemporaryDirectory("nbd-multi")
        let size: UInt64 = 16 << 20
        try DiskModel.create(at: dir.file("disk.raw"), size: size)
        let export = try FileExport(path: dir.file("disk.raw"), name: "disk")
        let expected = try await withServer([export], in: dir) { server -> [UInt8] in
            let uri = try NBDURI(parsing: server.uri("disk"))
            // Four clients, each owning every fourth 64 KiB block, writing in random order.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<4 {
                    group.addTask {
                        let c = try NBDClient.connect(uri)
                        defer { c.close() }
                        var rng = SeededGenerator(seed: UInt64(client))
                        var blocks = Array(stride(from: client, to: Int(size >> 16), by: 4))
                        blocks.shuffle(using: &rng)
                        for b in blocks {
                            try c.write(offset: UInt64(b) << 16, data: [UInt8](repeating: UInt8(truncatingIfNeeded: b &* 7 &+ 1), count: 65536))
                        }
                        try c.flush()
                    }
                }
                try await group.waitForAll()
            }
            let check = try NBDClient.connect(uri)
            defer { check.close() }
            var all: [UInt8] = []
            for offset in stride(from: UInt64(0), to: size, by: 4 << 20) { all += try check.read(offset: offset, length: 4 << 20) }
            return all
        }
        var model = DiskModel(size: Int(size))
        for b in 0..<Int(size >> 16) { model.fill(UInt8(truncatingIfNeeded: b &* 7 &+ 1), at: UInt64(b) << 16, length: 65536) }
        expectSame(expected, model.bytes, "the disk read back through NBD")
        expectSame(try fileBytes(dir.file("disk.raw")), model.bytes, "the file")
    }

    @Test func aClientThatNeverFinishesTheHandshakeIsClosed() async throws {
        let dir = try TemporaryDirectory("nbd-hs-timeout")
        let server = NBDServer(provider: NBDExportSet([MemoryExport(name: "m", size: 4096)]), threads: 1,
                               handshakeTimeout: .milliseconds(200))
        try await server.start(unixSocket: dir.file("s.sock"))
        do {
            let c = try RawConnection(dir.file("s.sock"))
            _ = try c.receive(18)
            try c.send(ClientMessage.flags()) // then silence
            // Closed by the server's timer (RawConnection's own receive timeout is 60 s).
            #expect(c.serverClosed())
        } catch {
            try? await server.shutdown()
            throw error
        }
        try await server.shutdown()
    }

    @Test func requestsOfOneConnectionOverlapAndRepliesMayComeOutOfOrder() async throws {
        let dir = try TemporaryDirectory("nbd-overlap")
        let export = RendezvousExport()
        try await withServer([export], in: dir) { server in
            let c = try RawConnection(server.socketPath)
            defer { c.close() }
            try c.handshake(export: "r")
            try c.send(ClientMessage.request(type: 0, cookie: 1, offset: 0, length: 16)
                       + ClientMessage.request(type: 1, cookie: 2, offset: 4096, length: 4, payload: [1, 2, 3, 4]))
            // The write's reply overtakes the blocked read's (which waits for the gate below).
            #expect(try c.simpleReply() == (0, 2))
            export.gate.signal()
            #expect(try c.simpleReply() == (0, 1))
            _ = try c.receive(16)
        }
        #expect(export.order.withLock { $0 } == ["write 4096", "read 0"])
    }

    @Test func shutdownWaitsForInFlightRequests() async throws {
        let dir = try TemporaryDirectory("nbd-shutdown")
        let export = GateExport()
        let server = try await TestServer(exports: [export], directory: dir)
        let c = try RawConnection(server.socketPath)
        try c.handshake(export: "g")
        try c.send(ClientMessage.request(type: 0, cookie: 1, offset: 0, length: 16))
        export.started.wait()
        async let stopped: Void = server.stop()
        // Shutdown removes the socket file as it begins: then it is under way while the read
        // is still blocked.
        #expect(await FileWatch.waitInBackground(for: server.socketPath, toExist: false), "shutdown did not begin")
        export.gate.signal()
        // The blocked read still gets its successful reply before the connection closes.
        #expect(try c.simpleReply() == (0, 1))
        #expect(try c.receive(16) == [UInt8](repeating: 0xAA, count: 16))
        #expect(c.serverClosed())
        try await stopped
        #expect(throws: NBDError.self) { try NBDClient.connect(NBDURI(parsing: server.uri("g"))) }
    }
}

/// An export whose read at offset 0 signals `started` and then waits for `gate`.
final class GateExport: NBDExport {
    let info = NBDExportInfo(name: "g", size: 1 << 20, metaContexts: [])
    let started = DispatchSemaphore(value: 0)
    let gate = DispatchSemaphore(value: 0)

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if offset == 0 {
            started.signal()
            guard gate.wait(timeout: .now() + 60) == .success else { throw NBDError(.io, "gate never opened") }
        }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xAA)
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {}
    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {}
    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {}
    func flush() throws {}
    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] { [] }
}
