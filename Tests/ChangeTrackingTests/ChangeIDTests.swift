import BlockIO
import ChangeTracking
import Foundation
import TestSupport
import Testing

struct ChangeIDTests {
    @Test func printsAndParsesUUIDSlashSequence() throws {
        let text = "3F2504E0-4F89-41D3-9A0C-0305E82C3301/7"
        let id = try #require(ChangeID(text))
        #expect(id.generation == UUID(uuidString: "3F2504E0-4F89-41D3-9A0C-0305E82C3301"))
        #expect(id.sequence == 7)
        #expect(id.description == text)
        #expect(ChangeID(id.description) == id)
        let lower = try #require(ChangeID("3f2504e0-4f89-41d3-9a0c-0305e82c3301/18446744073709551615"))
        #expect(lower.sequence == UInt64.max)
    }

    @Test(arguments: ["", "/", "3F2504E0-4F89-41D3-9A0C-0305E82C3301", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C3301/-1", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/+1",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C3301/ 1", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/1/2",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C330/1", "not-a-uuid/1", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/18446744073709551616",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C3301/0x10", " 3F2504E0-4F89-41D3-9A0C-0305E82C3301/1"])
    func rejectsMalformedChangeIDs(_ text: String) {
        #expect(ChangeID(text) == nil)
        expectTrackerError(.invalidArgument) { try ChangeID(parsing: text) }
    }

    @Test func codableAsString() throws {
        let id = ChangeID(generation: UUID(), sequence: 42)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        let data = try encoder.encode([id])
        #expect(String(decoding: data, as: UTF8.self) == "[\"\(id.description)\"]")
        #expect(try JSONDecoder().decode([ChangeID].self, from: data) == [id])
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([ChangeID].self, from: Data("[\"x/1\"]".utf8)) }
    }

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
