import NIOCore
@testable import NBD
import Testing

/// Validation and execution of requests against an export, without sockets.
struct NBDTransmissionTests {
    let export = MemoryExport(name: "m", size: 1 << 20, contexts: ["base:allocation", "qemu:dirty-bitmap:b"])

    private func session(structured: Bool = true, contexts: [(UInt32, String)] = [(0, "base:allocation"), (1, "qemu:dirty-bitmap:b")],
                         export: (any NBDExport)? = nil) -> NBDSession {
        let e = export ?? self.export
        return NBDSession(export: e, info: e.info, structuredReplies: structured, contexts: contexts.map { (id: $0.0, name: $0.1) })
    }

    private func req(_ type: UInt16, flags: UInt16 = 0, offset: UInt64 = 0, length: UInt32 = 512, payload: [UInt8]? = nil) -> NBDRequest {
        NBDRequest(flags: flags, type: type, cookie: 42, offset: offset, length: length, payload: payload.map { ByteBuffer(bytes: $0) })
    }

    @Test func validationRefusesBadRequestsWithTheRightErrno() {
        let s = session()
        let cases: [(NBDRequest, NBDError.Code?)] = [
            (req(0, offset: 0, length: 4096), nil),
            (req(0, offset: (1 << 20) - 512, length: 512), nil),
            (req(0, offset: (1 << 20) - 511, length: 512), .invalid), // past the end
            (req(0, offset: UInt64.max - 10, length: 512), .invalid), // offset overflow
            (req(0, length: (32 << 20) + 1), .invalid), // oversized read
            (req(0, length: 0), .invalid),
            (req(0, flags: 1 << 3), .invalid), // REQ_ONE is not a read flag
            (req(1, flags: 1, length: 3, payload: [1, 2, 3]), nil),
            (req(1, flags: 2, length: 1, payload: [1]), .invalid),
            (req(3, length: 0), nil),
            (req(4, flags: 1), nil),
            (req(6, flags: 3), nil),
            (req(6, flags: 1 << 4), .invalid), // FAST_ZERO not advertised
            (req(7, flags: 8, length: UInt32.max), .invalid), // past the end
            (req(7, flags: 8, length: 1 << 20), nil),
            (req(5), .invalid), // CACHE not supported
            (req(200), .invalid),
        ]
        for (r, code) in cases {
            #expect(NBDTransmission.validate(r, session: s)?.code == code, "\(r)")
        }
    }

    @Test func readOnlyExportRefusesWritesWithEPERM() {
        let ro = MemoryExport(name: "ro", size: 4096, readOnly: true)
        let s = session(export: ro)
        for t: UInt16 in [1, 4, 6] {
            #expect(NBDTransmission.validate(req(t, length: 1, payload: t == 1 ? [0] : nil), session: s)?.code == .permission)
        }
        #expect(NBDTransmission.validate(req(0), session: s) == nil)
    }

    @Test func blockStatusNeedsStructuredRepliesAndAContext() {
        #expect(NBDTransmission.validate(req(7), session: session(structured: false)) != nil)
        #expect(NBDTransmission.validate(req(7), session: session(contexts: [])) != nil)
    }

    @Test func structuredReadIsOneOffsetDataChunk() {
        _ = NBDTransmission.perform(req(1, length: 4, payload: [9, 8, 7, 6]), session: session(), allocator: .init())
        let b = NBDTransmission.perform(req(0, offset: 0, length: 6), session: session(), allocator: .init())
        #expect(Array(b.readableBytesView) == [0x66, 0x8E, 0x33, 0xEF, 0, 1, 0, 1] + [0, 0, 0, 0, 0, 0, 0, 42]
                + [0, 0, 0, 14] + [UInt8](repeating: 0, count: 8) + [9, 8, 7, 6, 0, 0])
    }

    @Test func simpleReadIsHeaderThenData() {
        let b = NBDTransmission.perform(req(0, offset: 100, length: 3), session: session(structured: false), allocator: .init())
        #expect(Array(b.readableBytesView) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0])
    }

    @Test func exportErrorsMapToWireErrnos() {
        for (code, errno) in [(NBDError.Code.io, UInt32(5)), (.noSpace, 28), (.permission, 1), (.invalid, 22), (.notSupported, 95)] {
            let failing = MemoryExport(name: "f", size: 4096, failure: NBDError(code, "injected"))
            let simple = NBDTransmission.perform(req(1, length: 1, payload: [1]), session: session(structured: false, export: failing),
                                                 allocator: .init())
            #expect(simple.getInteger(at: 4, as: UInt32.self) == errno)
            let chunk = NBDTransmission.perform(req(0), session: session(export: failing), allocator: .init())
            // ERROR chunk: type 0x8001, DONE, payload errno + message.
            #expect(chunk.getInteger(at: 4, as: UInt16.self) == 1)
            #expect(chunk.getInteger(at: 6, as: UInt16.self) == 0x8001)
            #expect(chunk.getInteger(at: 20, as: UInt32.self) == errno)
        }
    }

    @Test func blockStatusSendsOneChunkPerContextLastOneDone() throws {
        let b = NBDTransmission.perform(req(7, offset: 1000, length: 10000), session: session(), allocator: .init())
        var r = b
        var chunks: [(flags: UInt16, id: UInt32, extents: [NBDBlockStatusExtent])] = []
        while r.readableBytes > 0 {
            let header = r.readMultipleIntegers(as: (UInt32, UInt16, UInt16, UInt64, UInt32).self)
            let (magic, flags, type, cookie, length) = try #require(header)
            #expect(magic == 0x668E_33EF && type == 5 && cookie == 42)
            let readID = r.readInteger(as: UInt32.self)
            let id = try #require(readID)
            var extents: [NBDBlockStatusExtent] = []
            for _ in 0..<(Int(length) - 4) / 8 {
                let e = r.readMultipleIntegers(as: (UInt32, UInt32).self)
                let (l, f) = try #require(e)
                extents.append(NBDBlockStatusExtent(length: l, flags: f))
            }
            chunks.append((flags, id, extents))
        }
        #expect(chunks.map(\.id) == [0, 1])
        #expect(chunks.map(\.flags) == [0, 1])
        // MemoryExport reports 4 KiB-aligned extents: 1000..4096, 4096..8192, 8192..11000.
        for c in chunks {
            #expect(c.extents == [NBDBlockStatusExtent(length: 3096, flags: 0), NBDBlockStatusExtent(length: 4096, flags: 1),
                                  NBDBlockStatusExtent(length: 2808, flags: 0)])
        }
    }

    @Test func normalizeClipsDropsEmptiesAndHonoursReqOne() {
        let e = [NBDBlockStatusExtent(length: 0, flags: 1), NBDBlockStatusExtent(length: 100, flags: 1),
                 NBDBlockStatusExtent(length: 100, flags: 0)]
        #expect(NBDTransmission.normalize(e, length: 150, reqOne: false)
                == [NBDBlockStatusExtent(length: 100, flags: 1), NBDBlockStatusExtent(length: 50, flags: 0)])
        #expect(NBDTransmission.normalize(e, length: 50, reqOne: true) == [NBDBlockStatusExtent(length: 50, flags: 1)])
        #expect(NBDTransmission.normalize(e, length: 500, reqOne: true) == [NBDBlockStatusExtent(length: 100, flags: 1)])
        #expect(NBDTransmission.normalize([], length: 500, reqOne: false).isEmpty)
    }

    @Test func emptyBlockStatusFromTheExportBecomesAnErrorNotStatusZero() {
        final class Empty: NBDExport {
            let info = NBDExportInfo(name: "e", size: 4096, metaContexts: ["qemu:dirty-bitmap:x"])
            func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {}
            func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {}
            func trim(offset: UInt64, length: UInt32, fua: Bool) throws {}
            func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {}
            func flush() throws {}
            func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] { [] }
        }
        let b = NBDTransmission.perform(req(7), session: session(contexts: [(0, "qemu:dirty-bitmap:x")], export: Empty()),
                                        allocator: .init())
        #expect(b.getInteger(at: 6, as: UInt16.self) == 0x8001)
        #expect(b.getInteger(at: 20, as: UInt32.self) == 5)
    }
}
