import BlockIO
#if canImport(Glibc)
import Glibc
#endif
import Codecs
@testable import Filter
import Synchronization
import Testing
import TestSupport

/// The overlay holds sub-blocks (4 KiB of a 64 KiB block), not whole blocks: a write fills
/// only the sub-blocks it touches and the rest of the block keeps reading from the base.
/// Driven directly against a model of the disk: every read, every recovery and the final
/// merge must give exactly the model's bytes.
struct OverlaySubBlockTests {
    static let granularity: UInt64 = 65536
    /// 16 blocks and a partial 17th whose end is not 4 KiB aligned.
    static let diskSize: UInt64 = 16 * granularity + 5000

    /// A base kept in memory, read through the closure the overlay uses.
    final class Base: Sendable {
        let bytes: Mutex<[UInt8]>
        init(_ bytes: [UInt8]) { self.bytes = Mutex(bytes) }
        func read(_ offset: UInt64, _ buffer: UnsafeMutableRawBufferPointer) {
            bytes.withLock { b in
                for i in 0..<buffer.count {
                    let at = Int(offset) + i
                    buffer[i] = at < b.count ? b[at] : 0
                }
            }
        }
    }

    /// Writes through the overlay the way `LiveBlocks` does: one piece per block.
    func write(_ overlay: Overlay, _ base: Base, _ data: [UInt8], at offset: UInt64) throws {
        var at = offset
        while at < offset + UInt64(data.count) {
            let block = at / Self.granularity
            let end = min(offset + UInt64(data.count), (block + 1) * Self.granularity)
            let piece = Array(data[Int(at - offset)..<Int(end - offset)])
            let taken = try piece.withUnsafeBytes { try overlay.write($0, at: at, base: base.read) }
            #expect(taken)
            at = end
        }
    }

    func read(_ overlay: Overlay, _ base: Base, _ range: Range<UInt64>) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(range.count))
        var at = range.lowerBound
        while at < range.upperBound {
            let block = at / Self.granularity
            let end = min(range.upperBound, (block + 1) * Self.granularity)
            try out.withUnsafeMutableBytes { raw in
                let piece = UnsafeMutableRawBufferPointer(rebasing: raw[Int(at - range.lowerBound)..<Int(end - range.lowerBound)])
                let within = Int(at - block * Self.granularity)
                if try !overlay.read(block: block, within: within, into: piece, base: base.read) { base.read(at, piece) }
            }
            at = end
        }
        return out
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func writesReadsRecoveryAndMergeMatchTheModel(seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        let dir = try TemporaryDirectory("overlay-subblocks")
        var initial = [UInt8](repeating: 0, count: Int(Self.diskSize))
        rng.fill(&initial)
        let base = Base(initial)
        var model = initial
        var overlay = try Overlay.create(in: dir.path, granularity: Self.granularity, diskSize: Self.diskSize)
        #expect(overlay.subBlock == 4096)
        for step in 0..<600 {
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<60:
                // Any size, aligned or not, sometimes across blocks; often 4 KiB pages.
                let aligned = Bool.random(using: &rng)
                let length = aligned ? 4096 * Int.random(in: 1...20, using: &rng) : Int.random(in: 1...70000, using: &rng)
                let maxStart = Int(Self.diskSize) - length
                guard maxStart >= 0 else { continue }
                var offset = Int.random(in: 0...maxStart, using: &rng)
                if aligned { offset -= offset % 4096 }
                var data = [UInt8](repeating: 0, count: length)
                rng.fill(&data)
                try write(overlay, base, data, at: UInt64(offset))
                model.replaceSubrange(offset..<(offset + length), with: data)
            case 60..<65:
                let block = UInt64.random(in: 0..<16, using: &rng)
                #expect(try overlay.zeroBlock(block))
                let start = Int(block * Self.granularity)
                model.replaceSubrange(start..<(start + Int(Self.granularity)), with: [UInt8](repeating: 0, count: Int(Self.granularity)))
            case 65..<75:
                try overlay.flush()
            case 75..<80:
                // A restart: the map is rebuilt from the records alone.
                overlay = try Overlay.recover(in: dir.path, granularity: Self.granularity, diskSize: Self.diskSize)
            default:
                let start = UInt64.random(in: 0..<Self.diskSize, using: &rng)
                let end = min(Self.diskSize, start + UInt64.random(in: 1...200_000, using: &rng))
                let got = try read(overlay, base, start..<end)
                let same = got == Array(model[Int(start)..<Int(end)])
                #expect(same, "seed \(seed) step \(step): read [\(start), \(end)) differs from the model")
                if !same { return }
            }
        }
        let whole = try read(overlay, base, 0..<Self.diskSize)
        #expect(whole == model, "seed \(seed): the live disk differs from the model")
        try overlay.beginMerge(commit: true)
        while try overlay.mergeBatch(limit: 5,
                                     writeBase: { offset, bytes in base.bytes.withLock { $0.replaceSubrange(Int(offset)..<Int(offset) + bytes.count, with: bytes) } },
                                     zeroBase: { r in base.bytes.withLock { $0.replaceSubrange(Int(r.offset)..<Int(r.end), with: [UInt8](repeating: 0, count: Int(r.length))) } },
                                     syncBase: {}) > 0 {}
        let merged = base.bytes.withLock { $0 } == model
        #expect(merged, "seed \(seed): the base after the merge differs from the model")
    }

    /// A 4 KiB write into each block copies nothing: the data file holds 4 KiB per block (and
    /// allocates no more), and the base is never read for a write of whole sub-blocks.
    @Test func aPageWriteStoresOnlyThePage() throws {
        let dir = try TemporaryDirectory("overlay-subblocks-sparse")
        let g = Self.granularity
        let base = Base([UInt8](repeating: 0xBB, count: Int(Self.diskSize)))
        let overlay = try Overlay.create(in: dir.path, granularity: g, diskSize: Self.diskSize)
        let baseReads = Mutex(0)
        for block in 0..<UInt64(16) {
            let page = [UInt8](repeating: UInt8(block + 1), count: 4096)
            let taken = try page.withUnsafeBytes { bytes in
                try overlay.write(bytes, at: block * g + 8192, base: { offset, buffer in
                    baseReads.withLock { $0 += 1 }
                    base.read(offset, buffer)
                })
            }
            #expect(taken)
        }
        #expect(baseReads.withLock { $0 } == 0)
        #expect(overlay.storedBytes == 16 * 4096 + 17 * UInt64(Overlay.recordSize))
        var st = stat()
        #expect(stat("\(dir.path)/overlay.data", &st) == 0)
        let allocated = Int(st.st_blocks) * 512
        #expect(allocated <= 16 * 4096 + 65536, "the data file allocates \(allocated) bytes for 64 KiB of writes")
        for block in 0..<UInt64(16) {
            var expected = [UInt8](repeating: 0xBB, count: Int(g))
            for i in 8192..<12288 { expected[i] = UInt8(block + 1) }
            #expect(try read(overlay, base, block * g..<(block + 1) * g) == expected)
        }
    }

    /// The crash rule with sub-blocks: a write that adds sub-blocks to a flushed record's slot
    /// and is killed before its record exists loses only itself.
    @Test func anAddedSubBlockCutShortKeepsTheFlushedOnes() throws {
        struct Killed: Error {}
        let dir = try TemporaryDirectory("overlay-subblocks-kill")
        let g = Self.granularity
        let base = Base([UInt8](repeating: 0xBB, count: Int(Self.diskSize)))
        let overlay = try Overlay.create(in: dir.path, granularity: g, diskSize: Self.diskSize)
        try write(overlay, base, [UInt8](repeating: 0x11, count: 4096), at: 2 * g)
        try overlay.flush()
        try write(overlay, base, [UInt8](repeating: 0x22, count: 100), at: 2 * g + 10)      // in place
        overlay.faultBeforeRecord.withLock { $0 = { throw Killed() } }
        #expect(throws: Killed.self) { try write(overlay, base, [UInt8](repeating: 0x33, count: 4096), at: 2 * g + 20480) }
        let recovered = try Overlay.recover(in: dir.path, granularity: g, diskSize: Self.diskSize)
        var expected = [UInt8](repeating: 0xBB, count: Int(g))
        for i in 0..<4096 { expected[i] = 0x11 }
        for i in 10..<110 { expected[i] = 0x22 }
        let got = try read(recovered, base, 2 * g..<3 * g)
        #expect(got == expected, "block 2 after the kill does not hold exactly the acknowledged writes over the base")
    }

    /// An unflushed record whose bytes were lost (the data never reached the disk) is dropped:
    /// the block falls back to its older state, not to garbage.
    @Test func anUnflushedRecordWithLostBytesFallsBack() throws {
        let dir = try TemporaryDirectory("overlay-subblocks-torn")
        let g = Self.granularity
        let base = Base([UInt8](repeating: 0xBB, count: Int(Self.diskSize)))
        let overlay = try Overlay.create(in: dir.path, granularity: g, diskSize: Self.diskSize)
        try write(overlay, base, [UInt8](repeating: 0x44, count: 8192), at: 5 * g + 4096)
        // The slot's bytes never made it (a crash before writeback): zeroes where they were.
        let data = try BlockFile(path: "\(dir.path)/overlay.data", mode: .readWrite)
        try data.write([UInt8](repeating: 0, count: 8192), at: 4096)
        let recovered = try Overlay.recover(in: dir.path, granularity: g, diskSize: Self.diskSize)
        #expect(recovered.entry(forBlock: 5) == nil)
        #expect(try read(recovered, base, 5 * g..<6 * g) == [UInt8](repeating: 0xBB, count: Int(g)))
    }

    /// An overlay left by a version 1 filter (whole blocks, zero masks) is still read whole.
    @Test func aVersionOneOverlayStillReads() throws {
        let dir = try TemporaryDirectory("overlay-v1")
        let g = Self.granularity
        var content = [UInt8](repeating: 0, count: Int(g))
        var rng = SeededGenerator(seed: 9)
        rng.fill(&content)
        var header = ByteWriter()
        header.u64(Overlay.headerMagic); header.u32(1); header.u32(UInt32(g)); header.u64(Self.diskSize)
        header.u64(1); header.u32(0); header.u32(0); header.u64(0); header.u64(0)
        header.u64(XXH3.hash64(header.bytes))
        var record = ByteWriter()
        record.u32(Overlay.recordMagic); record.u32(Overlay.Kind.data.rawValue); record.u64(7); record.u64(0)
        record.u64(0); record.u64(XXH3.hash64(content)); record.u64(0); record.u64(0)
        record.u64(XXH3.hash64(record.bytes))
        let map = try BlockFile(path: "\(dir.path)/overlay.map", mode: .createReadWrite)
        try map.write(header.bytes + record.bytes, at: 0)
        let data = try BlockFile(path: "\(dir.path)/overlay.data", mode: .createReadWrite)
        try data.write(content, at: 0)
        let base = Base([UInt8](repeating: 0xBB, count: Int(Self.diskSize)))
        let overlay = try Overlay.recover(in: dir.path, granularity: g, diskSize: Self.diskSize)
        #expect(try read(overlay, base, 7 * g..<8 * g) == content)
        // Written on by this version: still whole blocks (the header's sub-block), still right.
        try write(overlay, base, [UInt8](repeating: 0x55, count: 512), at: 7 * g + 1000)
        for i in 1000..<1512 { content[i] = 0x55 }
        let again = try Overlay.recover(in: dir.path, granularity: g, diskSize: Self.diskSize)
        #expect(try read(again, base, 7 * g..<8 * g) == content)
    }
}
