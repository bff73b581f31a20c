import NIOCore
@testable import NBD
import Testing
import TestSupport

/// The request parser without sockets: drip-fed, batched, broken.
struct NBDRequestParserTests {
    /// A mixed stream: reads, writes with payloads, flush, block status, disc.
    private func sampleStream() -> (bytes: [UInt8], requests: [NBDRequest]) {
        var rng = SeededGenerator(seed: 3)
        var bytes: [UInt8] = []
        var requests: [NBDRequest] = []
        for i in 0..<40 {
            let cookie = UInt64(i) &* 0x9E37_79B9_7F4A_7C15
            switch i % 5 {
            case 0, 3:
                let payload = rng.bytes(Int(rng.next() % 3000) + 1)
                bytes += ClientMessage.request(type: 1, flags: 1, cookie: cookie, offset: UInt64(i) * 512,
                                               length: UInt32(payload.count), payload: payload)
                requests.append(NBDRequest(flags: 1, type: 1, cookie: cookie, offset: UInt64(i) * 512,
                                           length: UInt32(payload.count), payload: ByteBuffer(bytes: payload)))
            case 1:
                bytes += ClientMessage.request(type: 0, cookie: cookie, offset: 4096, length: 65536)
                requests.append(NBDRequest(flags: 0, type: 0, cookie: cookie, offset: 4096, length: 65536))
            case 2:
                bytes += ClientMessage.request(type: 7, flags: 8, cookie: cookie, offset: 0, length: 1 << 30)
                requests.append(NBDRequest(flags: 8, type: 7, cookie: cookie, offset: 0, length: 1 << 30))
            default:
                bytes += ClientMessage.request(type: 3, cookie: cookie)
                requests.append(NBDRequest(flags: 0, type: 3, cookie: cookie, offset: 0, length: 0))
            }
        }
        return (bytes, requests)
    }

    private func parseAll(_ chunks: [[UInt8]]) throws -> [NBDRequest] {
        var parser = NBDRequestParser()
        var pending = ByteBuffer(bytes: [])
        var out: [NBDRequest] = []
        for chunk in chunks {
            pending.writeBytes(chunk)
            while true {
                let r = try parser.next(&pending)
                guard case .request(let req) = r else { break }
                out.append(req)
            }
        }
        #expect(pending.readableBytes == 0)
        return out
    }

    @Test func manyRequestsInOneBuffer() throws {
        let (bytes, expected) = sampleStream()
        #expect(try parseAll([bytes]) == expected)
    }

    @Test func dripFedByteByByte() throws {
        let (bytes, expected) = sampleStream()
        #expect(try parseAll(bytes.map { [$0] }) == expected)
    }

    @Test func randomChunking() throws {
        let (bytes, expected) = sampleStream()
        var rng = SeededGenerator(seed: 99)
        var chunks: [[UInt8]] = []
        var i = 0
        while i < bytes.count {
            let n = min(Int(rng.next() % 5000) + 1, bytes.count - i)
            chunks.append(Array(bytes[i..<i + n]))
            i += n
        }
        #expect(try parseAll(chunks) == expected)
    }

    @Test func wrongMagicThrowsAndStaysBroken() {
        var parser = NBDRequestParser()
        var b = ByteBuffer(bytes: ClientMessage.request(type: 0, length: 512, magic: 0x2560_9514))
        #expect(throws: NBDError.self) { try parser.next(&b) }
        var good = ByteBuffer(bytes: ClientMessage.request(type: 0, length: 512))
        #expect(throws: NBDError.self) { try parser.next(&good) }
    }

    @Test func oversizedWriteIsReportedWithoutWaitingForThePayload() throws {
        var parser = NBDRequestParser(maximumPayload: 1 << 20)
        var b = ByteBuffer(bytes: ClientMessage.request(type: 1, cookie: 5, length: (1 << 20) + 1))
        let r = try parser.next(&b)
        #expect(r == .oversizedWrite(NBDRequest(flags: 0, type: 1, cookie: 5, offset: 0, length: (1 << 20) + 1)))
        #expect(throws: NBDError.self) { try parser.next(&b) }
    }

    @Test func oversizedReadIsParsedForTheServerToRefuse() throws {
        var parser = NBDRequestParser(maximumPayload: 1 << 20)
        var b = ByteBuffer(bytes: ClientMessage.request(type: 0, length: UInt32.max))
        #expect(try parser.next(&b) == .request(NBDRequest(flags: 0, type: 0, cookie: 1, offset: 0, length: UInt32.max)))
    }

    @Test func partialHeaderNeedsMoreData() throws {
        var parser = NBDRequestParser()
        var b = ByteBuffer(bytes: Array(ClientMessage.request(type: 0, length: 1).prefix(27)))
        #expect(try parser.next(&b) == .needMoreData)
        #expect(b.readableBytes == 27, "nothing consumed until the header is complete")
    }
}
