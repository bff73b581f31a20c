import BlockIO
import ChangeTracking
import Foundation
import TestSupport
import Testing

/// Configurations and ranges the tracker refuses.
struct ConfigurationTests {
    @Test(arguments: [UInt64(0), 1, 4095, 4097, 3 << 12, 2048, 32 << 20, 1 << 40])
    func rejectsBadGranularity(_ granularity: UInt64) throws {
        let dir = try TemporaryDirectory("tracker-bad")
        expectTrackerError(.invalidArgument) {
            try ChangeTracker.open(stateDirectory: dir.path, diskSize: 1 << 20, identity: nil,
                                   configuration: TrackerConfiguration(granularity: granularity))
        }
    }

    @Test func rejectsBadLogShapeAndDiskSize() throws {
        let dir = try TemporaryDirectory("tracker-bad")
        expectTrackerError(.invalidArgument) {
            try ChangeTracker.open(stateDirectory: dir.path, diskSize: 1 << 20, identity: nil,
                                   configuration: TrackerConfiguration(granularity: 65536, activityLogExtentSize: 4096))
        }
        expectTrackerError(.invalidArgument) {
            try ChangeTracker.open(stateDirectory: dir.path, diskSize: 1 << 20, identity: nil,
                                   configuration: TrackerConfiguration(activityLogSlots: 1))
        }
        expectTrackerError(.invalidArgument) {
            try ChangeTracker.open(stateDirectory: dir.path, diskSize: (16 << 40) + 1, identity: nil)
        }
    }

    @Test func rejectsRangesPastTheEnd() throws {
        let dir = try TemporaryDirectory("tracker-bad")
        let size: UInt64 = 10 * 65536 + 100
        let tracker = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: smallConfiguration)
        let id = tracker.status().currentChangeID
        for bad in [ByteRange(offset: size, length: 1), ByteRange(offset: size - 1, length: 2),
                    ByteRange(offset: size + 1, length: 0), ByteRange(offset: UInt64.max - 1, length: 2),
                    ByteRange(offset: 1, length: UInt64.max)] {
            expectTrackerError(.invalidArgument) { try tracker.markWrite(bad) }
            expectTrackerError(.invalidArgument) { try tracker.markZero(bad) }
            expectTrackerError(.invalidArgument) { try tracker.changes(since: id, in: bad) }
            expectTrackerError(.invalidArgument) { try tracker.changes(view: .active, in: bad) }
        }
        // The last byte is fine, and nothing bad was recorded.
        try tracker.markWrite(ByteRange(offset: size - 1, length: 1))
        #expect(try changedBlocks(tracker, since: id) == [10: false])
        expectTrackerError(.invalidArgument) { try tracker.changes(since: id, limit: 0) }
        try tracker.close(identity: nil)
        expectTrackerError(.closed) { try tracker.markWrite(ByteRange(offset: 0, length: 1)) }
    }
}
