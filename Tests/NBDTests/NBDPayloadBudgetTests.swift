import NIOCore
@testable import NBD
import Testing
import TestSupport

/// The payload budget's bookkeeping and the gated request parser, without sockets.
struct NBDPayloadBudgetTests {
    @Test func reservationsWaitInArrivalOrderAndAreGrantedByReleases() {
        var ledger = NBDPayloadLedger(capacity: 100)
        let first = ledger.reserve(60, for: 1)
        let second = ledger.reserve(50, for: 2)
        let third = ledger.reserve(10, for: 3)
        #expect(first)
        #expect(!second, "over the budget: queued")
        #expect(!third, "fits, but someone waits ahead of it: queued (no starvation of 2)")
        #expect(ledger.waiting == [2, 3])
        let afterSmall = ledger.release(5)
        #expect(afterSmall == [], "55 in use: 2 still does not fit, and 3 stays behind it")
        let afterLarge = ledger.release(55)
        #expect(afterLarge == [2, 3])
        #expect(ledger.used == 60 && !ledger.hasWaiters)
    }

    @Test func aCancelledHeadLetsTheNextWaiterIn() {
        var ledger = NBDPayloadLedger(capacity: 100)
        let reserved = [ledger.reserve(90, for: 1), ledger.reserve(50, for: 2), ledger.reserve(10, for: 3)]
        #expect(reserved == [true, false, false])
        let (wasWaiting, granted) = ledger.cancel(2)
        #expect(wasWaiting && granted == [3])
        let again = ledger.cancel(2)
        #expect(!again.wasWaiting && again.granted.isEmpty, "a second cancel finds nothing")
        #expect(ledger.used == 100)
    }

    @Test func theBudgetAlwaysHoldsTheLargestWrite() {
        let budget = NBDPayloadBudget(capacity: 1 << 20)
        #expect(budget.capacity == Int(NBDProtocol.maximumPayload))
        let granted = budget.reserve(Int(NBDProtocol.maximumPayload), for: budget.makeID()) {}
        #expect(granted)
    }

    @Test func aGatedParserTakesNoPayloadByteBeforeItIsAccepted() throws {
        var parser = NBDRequestParser(gatePayloads: true)
        let payload = SeededGenerator(seed: 8).bytesOf(10_000)
        var buffer = ByteBuffer(bytes: ClientMessage.request(type: 1, cookie: 9, offset: 512, length: 10_000, payload: payload))
        let header = NBDRequest(flags: 0, type: 1, cookie: 9, offset: 512, length: 10_000)
        let first = try parser.next(&buffer)
        #expect(first == .writeHeader(header))
        let second = try parser.next(&buffer)
        #expect(second == .needMoreData)
        #expect(buffer.readableBytes == 10_000, "the payload stays with the caller until accepted")
        parser.acceptPayload()
        // Drip-fed in odd pieces: the parser keeps what arrived and reports progress.
        var rest = buffer
        var result = NBDRequestParser.Result.needMoreData
        while rest.readableBytes > 0 {
            var piece = rest.readSlice(length: min(777, rest.readableBytes))!
            result = try parser.next(&piece)
            #expect(piece.readableBytes == 0)
            if rest.readableBytes > 0 {
                #expect(result == .needMoreData)
                #expect(parser.incompleteWrite?.received == 10_000 - rest.readableBytes)
            }
        }
        var expected = header
        expected.payload = ByteBuffer(bytes: payload)
        #expect(result == .request(expected))
        #expect(parser.incompleteWrite == nil)
    }
}

extension SeededGenerator {
    fileprivate func bytesOf(_ count: Int) -> [UInt8] {
        var copy = self
        return copy.bytes(count)
    }
}
