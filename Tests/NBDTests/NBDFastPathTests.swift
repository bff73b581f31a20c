import BlockIO
import Foundation
import NIOCore
@testable import NBD
import Synchronization
import Testing
import TestSupport

/// A memory export whose `readIfCached` answers only for even 4 KiB blocks (odd ones go to
/// the thread pool), whose read at `gatedOffset` waits for `gate`, and whose writes wait for
/// `writeGate` when it is set. It counts which path served each read.
final class TwoPathExport: NBDExport {
    let info: NBDExportInfo
    let memory: MemoryExport
    let gatedOffset: UInt64?
    let gate = DispatchSemaphore(value: 0)
    let started = DispatchSemaphore(value: 0)
    let writeGate: DispatchSemaphore?
    /// Offsets of writes whose `write` call returned.
    let finishedWrites = Mutex<Set<UInt64>>([])
    let inlineReads = Atomic<Int>(0)
    let poolReads = Atomic<Int>(0)

    init(name: String, size: UInt64, gatedOffset: UInt64? = nil, gateWrites: Bool = false) {
        memory = MemoryExport(name: name, size: size)
        info = memory.info
        self.gatedOffset = gatedOffset
        writeGate = gateWrites ? DispatchSemaphore(value: 0) : nil
    }

    /// Fills the export with a pattern that differs per byte offset.
    func fill() throws {
        var bytes = [UInt8](repeating: 0, count: Int(info.size))
        for i in bytes.indices { bytes[i] = Self.pattern(UInt64(i)) }
        try bytes.withUnsafeBytes { try memory.write(offset: 0, data: $0, fua: false) }
    }

    static func pattern(_ offset: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: offset &* 31 &+ offset >> 12) }

    func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard (offset / 4096) % 2 == 0, offset != gatedOffset else { return false }
        guard (try? memory.read(offset: offset, into: buffer)) != nil else { return false }
        inlineReads.add(1, ordering: .relaxed)
        return true
    }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if offset == gatedOffset {
            started.signal()
            guard gate.wait(timeout: .now() + 60) == .success else { throw NBDError(.io, "gate never opened") }
        }
        poolReads.add(1, ordering: .relaxed)
        try memory.read(offset: offset, into: buffer)
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {
        if let writeGate, writeGate.wait(timeout: .now() + 60) != .success { throw NBDError(.io, "write gate never opened") }
        try memory.write(offset: offset, data: data, fua: fua)
        finishedWrites.withLock { _ = $0.insert(offset) }
    }

    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {}
    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {}
    func flush() throws {}
    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] { [] }
}

extension RawConnection {
    /// One reply of either kind: (error, cookie, read data). A structured reply
    /// must be a single OFFSET_DATA or ERROR chunk with DONE (what this server sends).
    func anyReply(readLengths: [UInt64: Int]) throws -> (error: UInt32, cookie: UInt64, data: [UInt8]) {
        var h = ByteBuffer(bytes: try receive(16))
        guard let (magic, a, cookie) = h.readMultipleIntegers(as: (UInt32, UInt32, UInt64).self) else {
            throw CommandError(description: "short reply")
        }
        if magic == 0x6744_6698 {
            let length = a == 0 ? readLengths[cookie] ?? 0 : 0
            return (a, cookie, try receive(length))
        }
        guard magic == 0x668E_33EF else { throw CommandError(description: "bad reply magic \(magic)") }
        // Structured: `a` is flags(16) type(16), then the cookie, then the payload length.
        let type = UInt16(truncatingIfNeeded: a)
        var lengthBuffer = ByteBuffer(bytes: try receive(4))
        let length = Int(lengthBuffer.readInteger(as: UInt32.self) ?? 0)
        var payload = ByteBuffer(bytes: try receive(length))
        guard a >> 16 & 1 == 1 else { throw CommandError(description: "chunk without DONE") }
        if type == 1 {
            _ = payload.readInteger(as: UInt64.self)
            return (0, cookie, payload.readBytes(length: payload.readableBytes) ?? [])
        }
        return (payload.readInteger(as: UInt32.self) ?? 5, cookie, [])
    }
}

/// Sends bytes on a raw connection from a thread of its own.
final class BackgroundSend: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    // The socket is used from two threads at once, one sending and one receiving, which a
    // socket allows.
    private let socket: NBDSocket
    // Written by the thread before `done` is signalled, read after waiting for it.
    private var error: (any Error)?

    init(_ connection: RawConnection, _ bytes: [UInt8]) {
        socket = connection.socket
        Thread.detachNewThread { [self] in
            do { try socket.send(bytes) } catch { self.error = error }
            done.signal()
        }
    }

    func wait() throws {
        done.wait()
        if let error { throw error }
    }
}

/// The event-loop fast path for cached reads and the batched reply path: every request still
/// gets exactly its own reply, slow requests hold up nobody, writes are acknowledged only
/// after the export returned.
@Suite(.serialized)
struct NBDFastPathTests {
    @Test(arguments: [false, true])
    func manyPipelinedRequestsEachGetTheirOwnReply(structured: Bool) async throws {
        let dir = try TemporaryDirectory("nbd-pipeline")
        let size: UInt64 = 8 << 20
        let export = TwoPathExport(name: "p", size: size)
        try export.fill()
        try await withServer([export], in: dir) { server in
            let c = try RawConnection(server.socketPath)
            defer { c.close() }
            try c.handshake(export: "p", structured: structured)
            var rng = SeededGenerator(seed: 7)
            var burst: [UInt8] = []
            var reads: [UInt64: (offset: UInt64, length: Int)] = [:]
            var writes: [UInt64: UInt64] = [:]
            // Reads stay in the first half, writes in the second, so read data is predictable.
            for cookie in UInt64(1)...600 {
                switch cookie % 5 {
                case 0:
                    let offset = (size / 2) + (cookie / 5) * 4096
                    burst += ClientMessage.request(type: 1, cookie: cookie, offset: offset, length: 4096,
                                                   payload: [UInt8](repeating: UInt8(cookie & 0xFF), count: 4096))
                    writes[cookie] = offset
                case 1:
                    burst += ClientMessage.request(type: 3, cookie: cookie)
                default:
                    // 4 KiB-aligned reads land on both paths; an unaligned or large one on either.
                    let length = [4096, 512, 8192, 200 << 10][Int(cookie) % 4]
                    let offset = UInt64.random(in: 0..<(size / 2 - UInt64(length)), using: &rng) / 512 * 512
                    burst += ClientMessage.request(type: 0, cookie: cookie, offset: offset, length: UInt32(length))
                    reads[cookie] = (offset, length)
                }
            }
            // A real client reads replies while it sends (the server stops reading while the
            // client leaves its replies unread), so the burst goes out from another thread.
            let sender = BackgroundSend(c, burst)
            var seen: Set<UInt64> = []
            for _ in 0..<600 {
                let r = try c.anyReply(readLengths: reads.mapValues { $0.length })
                #expect(r.error == 0, "cookie \(r.cookie)")
                #expect(seen.insert(r.cookie).inserted, "cookie \(r.cookie) answered twice")
                if let read = reads[r.cookie] {
                    let want = (read.offset..<read.offset + UInt64(read.length)).map(TwoPathExport.pattern)
                    #expect(r.data == want, "cookie \(r.cookie): wrong data for [\(read.offset), +\(read.length))")
                } else {
                    #expect(r.data.isEmpty)
                }
            }
            #expect(seen == Set(1...600))
            try sender.wait()
            let contents = export.memory.contents
            for (cookie, offset) in writes {
                let got = contents[Int(offset)..<Int(offset) + 4096]
                #expect(got.allSatisfy { $0 == UInt8(cookie & 0xFF) }, "write \(cookie) did not land")
            }
        }
        // The burst exercised both the event loop path and the pool path.
        #expect(export.inlineReads.load(ordering: .relaxed) > 0)
        #expect(export.poolReads.load(ordering: .relaxed) > 0)
    }

    @Test func aBlockedReadHoldsUpNeitherItsConnectionNorAnother() async throws {
        let dir = try TemporaryDirectory("nbd-blocked")
        let export = TwoPathExport(name: "b", size: 1 << 20, gatedOffset: 4096 * 3)
        try export.fill()
        try await withServer([export], in: dir) { server in
            let a = try RawConnection(server.socketPath)
            defer { a.close() }
            try a.handshake(export: "b")
            try a.send(ClientMessage.request(type: 0, cookie: 1, offset: 4096 * 3, length: 4096))
            export.started.wait()
            // While that read is stuck: a cached read and a pool read on the same connection, and
            // both on another connection, all complete (the gate opens only afterwards).
            try a.send(ClientMessage.request(type: 0, cookie: 2, offset: 0, length: 4096)
                       + ClientMessage.request(type: 0, cookie: 3, offset: 4096, length: 4096))
            var early: Set<UInt64> = []
            for _ in 0..<2 {
                let r = try a.simpleReply()
                #expect(r.error == 0)
                early.insert(r.cookie)
                _ = try a.receive(4096)
            }
            #expect(early == [2, 3])
            let b = try RawConnection(server.socketPath)
            defer { b.close() }
            try b.handshake(export: "b")
            for (cookie, offset) in [(UInt64(4), UInt64(0)), (5, 4096)] {
                try b.send(ClientMessage.request(type: 0, cookie: cookie, offset: offset, length: 4096))
                #expect(try b.simpleReply() == (0, cookie))
                #expect(try b.receive(4096) == (offset..<offset + 4096).map(TwoPathExport.pattern))
            }
            export.gate.signal()
            #expect(try a.simpleReply() == (0, 1))
            #expect(try a.receive(4096) == (UInt64(4096 * 3)..<4096 * 4).map(TwoPathExport.pattern))
        }
    }

    @Test func aWriteIsAcknowledgedOnlyAfterTheExportReturned() async throws {
        let dir = try TemporaryDirectory("nbd-write-ack")
        let export = TwoPathExport(name: "w", size: 1 << 20, gateWrites: true)
        try await withServer([export], in: dir) { server in
            let c = try RawConnection(server.socketPath)
            defer { c.close() }
            try c.handshake(export: "w")
            // The write waits in the export; a cached read behind it is answered first. A server
            // that acknowledged the write before (or without) the export call would answer it first.
            try c.send(ClientMessage.request(type: 1, cookie: 1, offset: 8192, length: 4, payload: [1, 2, 3, 4])
                       + ClientMessage.request(type: 0, cookie: 2, offset: 0, length: 16))
            #expect(try c.simpleReply() == (0, 2))
            _ = try c.receive(16)
            #expect(export.finishedWrites.withLock { $0.isEmpty })
            export.writeGate?.signal()
            #expect(try c.simpleReply() == (0, 1))
            #expect(export.finishedWrites.withLock { $0 } == [8192])
        }
    }

    @Test func pageCacheReadsGiveTheFileBytesAndZeroesPastTheEnd() throws {
        let dir = try TemporaryDirectory("nbd-pagecache")
        let path = dir.file("f.raw")
        var rng = SeededGenerator(seed: 3)
        let bytes = (0..<20000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let file = try BlockFile(path: path, mode: .createReadWrite)
        try file.write(bytes, at: 0)
        // A blocking read first, so the pages are certainly cached.
        _ = try file.read(count: 20000, at: 0)
        var out = [UInt8](repeating: 0xEE, count: 8192)
        #expect(out.withUnsafeMutableBytes { file.readIfCached(into: $0, at: 4000) })
        #expect(out == Array(bytes[4000..<12192]))
        #expect(out.withUnsafeMutableBytes { file.readIfCached(into: $0, at: 16000) })
        #expect(out == Array(bytes[16000...]) + [UInt8](repeating: 0, count: 8192 - 4000))
        let export = try FileExport(path: path)
        #expect(out.withUnsafeMutableBytes { export.readIfCached(offset: 100, into: $0) })
        #expect(out == Array(bytes[100..<8292]))
    }
}
