import Foundation

/// Serialises the requests that touch the same blocks, first come first served.
///
/// The tracker keeps one tag per block ("changed in epoch E", "reads as zero"), and the disk
/// holds the bytes of whichever request reached it last. For the two to agree once both
/// requests are acknowledged, the mark and the I/O of one request must not interleave with
/// those of another request on the same block: a WRITE marked before a TRIM but landing
/// after it would leave data on the disk under a "reads as zero" tag, and the next backup
/// would store zeroes there. Holding the blocks from the mark until the I/O is done orders
/// the marks exactly as the I/O. Requests on other blocks run in parallel.
///
/// A request waits only for earlier requests that overlap it (tickets), so a large request
/// is never starved by a stream of small ones, and the earliest waiter can always go: no
/// deadlock among requests that take one range each.
final class BlockRangeLock: @unchecked Sendable {
    private struct Holder {
        var ticket: UInt64
        var blocks: Range<UInt64>
    }

    private let condition = NSCondition()
    /// Granted and waiting requests in arrival order (guarded by `condition`).
    private var queue: [Holder] = []
    private var nextTicket: UInt64 = 0

    /// Runs `body` while no other request holds a block of `blocks`.
    func withBlocks<T>(_ blocks: Range<UInt64>, _ body: () throws -> T) rethrows -> T {
        condition.lock()
        let ticket = nextTicket
        nextTicket &+= 1
        queue.append(Holder(ticket: ticket, blocks: blocks))
        while queue.contains(where: { $0.ticket < ticket && $0.blocks.overlaps(blocks) }) {
            condition.wait()
        }
        condition.unlock()
        defer {
            condition.lock()
            queue.removeAll { $0.ticket == ticket }
            condition.broadcast()
            condition.unlock()
        }
        return try body()
    }
}
