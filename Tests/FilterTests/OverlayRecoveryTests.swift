@testable import Filter
import Synchronization
import Testing
import TestSupport

/// The overlay's crash rule, driven directly: a write cut short after its bytes land but
/// before its record is appended (where a SIGKILL can stop the filter) must never take the
/// acknowledged writes before it down with it.
struct OverlayRecoveryTests {
    struct Killed: Error {}

    @Test func aWriteCutShortKeepsEveryEarlierAcknowledgedWrite() throws {
        let dir = try TemporaryDirectory("overlay-recovery")
        let granularity: UInt64 = 65536
        let overlay = try Overlay.create(in: dir.path, granularity: granularity, diskSize: 16 * granularity)
        let base: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void = { _, buffer in
            buffer.initializeMemory(as: UInt8.self, repeating: 0xBB)
        }
        func write(_ value: UInt8, at offset: UInt64, count: Int) throws {
            let bytes = [UInt8](repeating: value, count: count)
            _ = try bytes.withUnsafeBytes { try overlay.write($0, at: offset, base: base) }
        }
        // Two acknowledged, unflushed writes into block 3, then a third one killed midway.
        try write(0x11, at: 3 * granularity, count: 4096)
        try write(0x22, at: 3 * granularity + 8192, count: 4096)
        overlay.faultBeforeRecord.withLock { $0 = { throw Killed() } }
        #expect(throws: Killed.self) { try write(0x33, at: 3 * granularity, count: 65536) }

        let recovered = try Overlay.recover(in: dir.path, granularity: granularity, diskSize: 16 * granularity)
        var block = [UInt8](repeating: 0, count: Int(granularity))
        let mapped = try block.withUnsafeMutableBytes { try recovered.read(block: 3, within: 0, into: $0, base: base) }
        #expect(mapped, "block 3 fell back to the base: its acknowledged writes were lost")
        var expected = [UInt8](repeating: 0xBB, count: Int(granularity))
        for i in 0..<4096 { expected[i] = 0x11; expected[8192 + i] = 0x22 }
        let intact = block == expected // a Bool, so a failure prints one line, not 64 KiB
        #expect(intact, "block 3 does not hold exactly the two acknowledged writes over the base")
    }
}
