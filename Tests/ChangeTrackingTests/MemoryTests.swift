import BlockIO
import ChangeTracking
import TestSupport
import Testing

struct MemoryTests {
    /// The documented bound: blocks × (1 byte + 1 bit), + 2 bits per block with a checkpoint
    /// open. A 2 TiB disk at 64 KiB: 32 Mi blocks → 36 MiB, 44 MiB with a checkpoint open.
    @Test func twoTebibyteDiskStaysUnder64MiB() throws {
        let dir = try TemporaryDirectory("tracker-memory")
        let size: UInt64 = 2 << 40
        let t = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil) // no disk file needed
        let blocks = Int(size / 65536)
        let idle = t.status().memoryFootprint
        #expect(idle >= blocks + blocks / 8)
        #expect(idle < 64 << 20, "\(idle) bytes")
        try t.markWrite(ByteRange(offset: size - 1, length: 1))
        _ = try t.checkpoint()
        try t.markZero(ByteRange(offset: 0, length: 1 << 30))
        let open = t.status().memoryFootprint
        #expect(open >= blocks + 3 * blocks / 8)
        #expect(open < 64 << 20, "\(open) bytes with a checkpoint open")
        let page = try t.changes(view: .checkpoint, in: ByteRange(offset: 0, length: size))
        #expect(page.extents.count == 1, "no committed predecessor: whole disk")
        try t.close(identity: nil)
    }
}
