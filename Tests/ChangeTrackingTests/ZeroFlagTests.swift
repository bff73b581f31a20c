import BlockIO
import ChangeTracking
import Testing
import TestSupport

/// While a checkpoint is open, a since-query describes the frozen base the agent reads: a
/// block zeroed after the checkpoint must not be reported as "reads as zero" (the base still
/// holds its data), or a backup would store zeroes for it.
struct ZeroFlagTests {
    @Test func blocksZeroedAfterTheCheckpointAreNotReportedAsZeroToSinceQueries() throws {
        let dir = try TemporaryDirectory("zeroflag")
        let g: UInt64 = 65536
        let tracker = try ChangeTracker.open(stateDirectory: dir.path, diskSize: 16 * g, identity: nil, configuration: smallConfiguration)
        let start = try tracker.checkpoint().changeID
        try tracker.release(commit: true)
        try tracker.markWrite(ByteRange(offset: 0, length: g))        // block 0: data before the checkpoint
        try tracker.markZero(ByteRange(offset: 2 * g, length: g))     // block 2: zero before the checkpoint
        _ = try tracker.checkpoint()
        try tracker.markZero(ByteRange(offset: 0, length: g))         // block 0 zeroed after it
        try tracker.markZero(ByteRange(offset: 5 * g, length: g))     // block 5 only after it
        let blocks = try changedBlocks(tracker, since: start)
        #expect(blocks[0] == false, "block 0 holds data in the frozen base")
        #expect(blocks[2] == true, "block 2 reads as zero in the frozen base")
        #expect(blocks[5] == false, "block 5 changed after the checkpoint: reported, to be read")
        // Once released, the live disk is what a query describes: block 0 now reads as zero.
        try tracker.release(commit: true)
        let after = try changedBlocks(tracker, since: start)
        #expect(after[0] == true)
        #expect(after[5] == true)
    }
}
