import BlockIO
import Testing

struct ByteRangeTests {
    @Test func alignsOutwardAndClipsAtTheEnd() {
        let r = ByteRange(offset: 65_537, length: 1)
        #expect(r.alignedOutward(to: 65_536, clippedAt: 1 << 30) == ByteRange(offset: 65_536, length: 65_536))
        let tail = ByteRange(offset: 99_000, length: 500)
        #expect(tail.alignedOutward(to: 65_536, clippedAt: 100_000) == ByteRange(offset: 65_536, length: 34_464))
    }

    @Test func coalescesTouchingAndOverlapping() {
        let ranges = [ByteRange(offset: 10, length: 5), ByteRange(offset: 0, length: 10),
                      ByteRange(offset: 30, length: 2), ByteRange(offset: 12, length: 1), ByteRange(offset: 40, length: 0)]
        #expect(ranges.coalesced() == [ByteRange(offset: 0, length: 15), ByteRange(offset: 30, length: 2)])
    }

    @Test func intersection() {
        let a = ByteRange(offset: 0, length: 10), b = ByteRange(offset: 5, length: 10)
        #expect(a.intersection(b) == ByteRange(offset: 5, length: 5))
        #expect(a.intersection(ByteRange(offset: 10, length: 1)) == nil)
    }
}
