import BlockIO
import Foundation
import Testing
import TestSupport

struct DiskImageTests {
    // MARK: - Raw

    @Test func rawFileIsAnythingThatIsNotADescriptor() throws {
        let dir = try TemporaryDirectory("disk-raw")
        var rng = SeededGenerator(seed: 1)
        let bytes = rng.bytes(10_000)  // not a multiple of 512: raw sizes are any size
        try Data(bytes).write(to: URL(fileURLWithPath: dir.file("blob")))
        let disk = try DiskImage.open(path: dir.file("blob"), writable: false)
        #expect(disk.format == .raw)
        #expect(disk.size == 10_000)
        #expect(disk.extents == [DiskExtent(path: dir.file("blob"), range: ByteRange(offset: 0, length: 10_000), fileOffset: 0, access: .readWrite)])
        #expect(try disk.read(count: 10_000, at: 0) == bytes)
        #expect(try disk.identity().map(\.size) == [10_000])
    }

    @Test func createRawIsSparseAndNeverOverwrites() throws {
        let dir = try TemporaryDirectory("disk-create-raw")
        let disk = try DiskImage.createRaw(path: dir.file("d.raw"), size: 64 << 20)
        #expect(disk.size == 64 << 20 && disk.isWritable)
        #expect(try disk.dataRanges(in: ByteRange(offset: 0, length: 64 << 20)) == [])
        expectBlockIOError(.invalidArgument, mentioning: [dir.file("d.raw"), "already exists"]) {
            _ = try DiskImage.createRaw(path: dir.file("d.raw"), size: 1)
        }
        #expect(try DiskImage.open(path: dir.file("d.raw"), writable: false).size == 64 << 20)
    }

    @Test func dataRangesOfASparseRawFile() throws {
        let dir = try TemporaryDirectory("disk-holes")
        let disk = try DiskImage.createRaw(path: dir.file("d.raw"), size: 16 << 20)
        let written = [ByteRange(offset: 1 << 20, length: 64 << 10), ByteRange(offset: 10 << 20, length: 128 << 10)]
        for r in written { try disk.write([UInt8](repeating: 7, count: Int(r.length)), at: r.offset) }
        let data = try disk.dataRanges(in: ByteRange(offset: 0, length: 16 << 20))
        for r in written { #expect(data.contains { $0.contains(r) }, "\(r) not in \(data)") }
        // File systems allocate in blocks: allow a little slack, but not the holes between.
        #expect(data.totalLength <= written.totalLength + 2 * (64 << 10), "\(data)")
        // A sub-range query is clipped to the query.
        #expect(try disk.dataRanges(in: ByteRange(offset: (1 << 20) + 4096, length: 4096)) == [ByteRange(offset: (1 << 20) + 4096, length: 4096)])
    }

    @Test func outOfRangeAndReadOnlyAreRefused() throws {
        let dir = try TemporaryDirectory("disk-range")
        _ = try DiskImage.createRaw(path: dir.file("d.raw"), size: 4096)
        let disk = try DiskImage.open(path: dir.file("d.raw"), writable: true)
        expectBlockIOError(.invalidArgument, mentioning: ["cannot read 2 bytes at offset 4095", "the disk is 4096 bytes"]) {
            _ = try disk.read(count: 2, at: 4095)
        }
        expectBlockIOError(.invalidArgument, mentioning: ["cannot write"]) { try disk.write([1], at: 4096) }
        expectBlockIOError(.invalidArgument, mentioning: ["offset \(UInt64.max)"]) { try disk.write([1], at: UInt64.max) }
        expectBlockIOError(.invalidArgument, mentioning: ["punch a hole"]) { try disk.punchHole(ByteRange(offset: 4000, length: 97)) }
        expectBlockIOError(.invalidArgument, mentioning: ["write zeroes"]) { try disk.writeZeroes(ByteRange(offset: UInt64.max - 1, length: 2)) }
        expectBlockIOError(.invalidArgument, mentioning: ["map data"]) { _ = try disk.dataRanges(in: ByteRange(offset: 0, length: 4097)) }
        #expect(try disk.read(count: 0, at: 4096) == [])
        expectBlockIOError(.invalidArgument, mentioning: ["negative"]) { _ = try disk.read(count: -1, at: 0) }

        let readOnly = try DiskImage.open(path: dir.file("d.raw"), writable: false)
        expectBlockIOError(.permissionDenied, mentioning: ["opened read-only"]) { try readOnly.write([1], at: 0) }
        expectBlockIOError(.permissionDenied, mentioning: ["opened read-only"]) { try readOnly.punchHole(ByteRange(offset: 0, length: 1)) }
    }

    // MARK: - Multi-extent VMDK, hand-written

    /// Three extents in two files: a.bin holds extents 1 and 3 at different offsets, b.bin holds extent 2.
    private func makeSplitDisk(_ dir: TemporaryDirectory) throws -> String {
        try makeSparseFile(dir.file("a.bin"), size: 40 * 512)
        try makeSparseFile(dir.file("b.bin"), size: 7 * 512)
        let path = dir.file("split.vmdk")
        try writeText(descriptorText(createType: "twoGbMaxExtentFlat", extents: [
            "RW 10 FLAT \"a.bin\" 0", "RW 7 FLAT \"b.bin\" 0", "RW 25 FLAT \"a.bin\" 12",
        ]), to: path)
        return path
    }

    @Test func spansExtentsLikeAFlatDisk() throws {
        let dir = try TemporaryDirectory("disk-model")
        let disk = try DiskImage.open(path: try makeSplitDisk(dir), writable: true)
        #expect(disk.format == .vmdk(subformat: .twoGbMaxExtentFlat))
        #expect(disk.size == 42 * 512)
        #expect(disk.extents.map(\.range) == [ByteRange(offset: 0, length: 5120), ByteRange(offset: 5120, length: 3584),
                                               ByteRange(offset: 8704, length: 12800)])
        #expect(disk.extents.map(\.fileOffset) == [0, 0, 6144])
        #expect(disk.extents[1].path == dir.file("b.bin"))
        #expect(try disk.identity().count == 2)  // one per file, not per extent

        // Model test: random writes, trims and zeroes against an in-memory disk.
        let seed: UInt64 = 0x5eed
        var rng = SeededGenerator(seed: seed)
        var model = [UInt8](repeating: 0, count: Int(disk.size))
        for step in 0..<300 {
            let offset = Int.random(in: 0..<model.count, using: &rng)
            let length = Int.random(in: 0...min(3000, model.count - offset), using: &rng)
            switch Int.random(in: 0..<4, using: &rng) {
            case 0, 1:
                let bytes = rng.bytes(length)
                try disk.write(bytes, at: UInt64(offset))
                model.replaceSubrange(offset..<offset + length, with: bytes)
            case 2:
                try disk.punchHole(ByteRange(offset: UInt64(offset), length: UInt64(length)))
                model.replaceSubrange(offset..<offset + length, with: repeatElement(0, count: length))
            default:
                try disk.writeZeroes(ByteRange(offset: UInt64(offset), length: UInt64(length)))
                model.replaceSubrange(offset..<offset + length, with: repeatElement(0, count: length))
            }
            let readAt = Int.random(in: 0..<model.count, using: &rng)
            let readLength = Int.random(in: 0...model.count - readAt, using: &rng)
            // require: stop at the first divergence, the later ones only repeat it.
            try #require(try disk.read(count: readLength, at: UInt64(readAt)) == Array(model[readAt..<readAt + readLength]),
                         "seed \(seed) step \(step)")
        }
        try disk.sync()
        #expect(try disk.read(count: model.count, at: 0) == model)
        // The gap in a.bin between extent 1 (sectors 0-9) and extent 3 (from sector 12) is never touched.
        #expect(try BlockFile(path: dir.file("a.bin"), mode: .readOnly).read(count: 1024, at: 5120) == [UInt8](repeating: 0, count: 1024))
    }

    @Test func dataRangesAreMappedPerExtentAndMergedAcrossBoundaries() throws {
        let dir = try TemporaryDirectory("disk-multi-holes")
        let mib: UInt64 = 1 << 20
        for name in ["e1", "e2", "e3"] { try makeSparseFile(dir.file(name), size: 5 * mib) }
        let path = dir.file("m.vmdk")
        // e2 is used from file offset 1 MiB, so a wrong mapping would be visible.
        try writeText(descriptorText(extents: [
            "RW 8192 FLAT \"e1\" 0", "RW 8192 FLAT \"e2\" 2048", "RW 8192 FLAT \"e3\" 0",
        ]), to: path)
        let disk = try DiskImage.open(path: path, writable: true)
        // Straddles the e1/e2 boundary at 4 MiB, and one block inside e3.
        let across = ByteRange(offset: 4 * mib - 64 * 1024, length: 128 * 1024)
        let inside = ByteRange(offset: 9 * mib, length: 64 * 1024)
        for r in [across, inside] { try disk.write([UInt8](repeating: 1, count: Int(r.length)), at: r.offset) }
        // Something only outside the mapped part of e2 (file offset 0) must not show up.
        try BlockFile(path: dir.file("e2"), mode: .readWrite).write([UInt8](repeating: 9, count: 4096), at: 0)

        let data = try disk.dataRanges(in: ByteRange(offset: 0, length: disk.size))
        #expect(data == [across, inside], "\(data)")
        #expect(try disk.dataRanges(in: ByteRange(offset: 4 * mib, length: 4 * mib)) == [ByteRange(offset: 4 * mib, length: 64 * 1024)])
        // Punching across the boundary frees both sides.
        try disk.punchHole(across)
        #expect(try disk.dataRanges(in: ByteRange(offset: 0, length: disk.size)) == [inside])
    }

    // MARK: - Refusals when opening

    @Test func sparseVMDKAndQcow2AreRefusedButCanBeOpenedAsRaw() throws {
        let dir = try TemporaryDirectory("disk-magic")
        try Data("KDMV".utf8 + [1, 0, 0, 0] + [UInt8](repeating: 0, count: 504)).write(to: URL(fileURLWithPath: dir.file("s.vmdk")))
        expectBlockIOError(.invalidArgument, mentioning: [dir.file("s.vmdk"), "sparse VMDK", "KDMV", "qemu-img convert -O vmdk -o subformat=monolithicFlat"]) {
            _ = try DiskImage.open(path: dir.file("s.vmdk"), writable: false)
        }
        #expect(try DiskImage.openRaw(path: dir.file("s.vmdk"), writable: false).size == 512)
        try Data([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]).write(to: URL(fileURLWithPath: dir.file("q.img")))
        expectBlockIOError(.invalidArgument, mentioning: ["qcow2", "qemu-img convert -O raw"]) {
            _ = try DiskImage.open(path: dir.file("q.img"), writable: false)
        }
    }

    @Test func missingExtentNamesTheFileAndTheDescriptor() throws {
        let dir = try TemporaryDirectory("disk-missing")
        try writeText(descriptorText(extents: ["RW 8 FLAT \"gone-flat.vmdk\" 0"]), to: dir.file("d.vmdk"))
        expectBlockIOError(.notFound, mentioning: [dir.file("d.vmdk"), "extent 1", dir.file("gone-flat.vmdk"), "does not exist"]) {
            _ = try DiskImage.open(path: dir.file("d.vmdk"), writable: false)
        }
    }

    @Test func truncatedExtentIsRefused() throws {
        let dir = try TemporaryDirectory("disk-truncated")
        try makeSparseFile(dir.file("d-flat.vmdk"), size: 1000 * 512)
        try writeText(descriptorText(extents: ["RW 1000 FLAT \"d-flat.vmdk\" 1"]), to: dir.file("d.vmdk"))
        expectBlockIOError(.corrupt, mentioning: [dir.file("d-flat.vmdk"), "is 512000 bytes, descriptor says 512512", "the image is truncated"]) {
            _ = try DiskImage.open(path: dir.file("d.vmdk"), writable: false)
        }
    }

    @Test func hugeSectorCountsAreRefusedNotAllocated() throws {
        let dir = try TemporaryDirectory("disk-huge")
        try makeSparseFile(dir.file("d-flat.vmdk"), size: 512)
        try writeText(descriptorText(extents: ["RW 18014398509481983 FLAT \"d-flat.vmdk\" 0"]), to: dir.file("d.vmdk"))
        expectBlockIOError(.corrupt, mentioning: ["is 512 bytes, descriptor says 9223372036854775296", "truncated"]) {
            _ = try DiskImage.open(path: dir.file("d.vmdk"), writable: false)
        }
    }

    @Test func garbageAndOversizedDescriptorsAreRefused() throws {
        let dir = try TemporaryDirectory("disk-garbage")
        try writeText("# Disk DescriptorFile\n\u{1}\u{2}garbage garbage\n", to: dir.file("g.vmdk"))
        expectBlockIOError(.corrupt, mentioning: [dir.file("g.vmdk"), "line 2", "cannot read"]) {
            _ = try DiskImage.open(path: dir.file("g.vmdk"), writable: false)
        }
        let padding = String(repeating: "# padding padding padding padding padding padding\n", count: 1500)
        try writeText(descriptorText(extents: ["RW 8 FLAT \"x\" 0"]) + padding, to: dir.file("big.vmdk"))
        expectBlockIOError(.corrupt, mentioning: [dir.file("big.vmdk"), "65536-byte limit"]) {
            _ = try DiskImage.open(path: dir.file("big.vmdk"), writable: false)
        }
        try writeText(descriptorText(parentCID: "0badcafe", extents: ["RW 8 FLAT \"x\" 0"]), to: dir.file("delta.vmdk"))
        expectBlockIOError(.invalidArgument, mentioning: ["parentCID=badcafe", "delta"]) {
            _ = try DiskImage.open(path: dir.file("delta.vmdk"), writable: false)
        }
    }

    @Test func accessWordsAndAliasingExtents() throws {
        let dir = try TemporaryDirectory("disk-access")
        try makeSparseFile(dir.file("f"), size: 64 * 512)
        try writeText(descriptorText(extents: ["RW 8 FLAT \"f\" 0", "RDONLY 8 FLAT \"f\" 8"]), to: dir.file("ro.vmdk"))
        expectBlockIOError(.permissionDenied, mentioning: ["extent 2", "RDONLY", "read-only"]) {
            _ = try DiskImage.open(path: dir.file("ro.vmdk"), writable: true)
        }
        #expect(try DiskImage.open(path: dir.file("ro.vmdk"), writable: false).size == 16 * 512)

        try writeText(descriptorText(extents: ["NOACCESS 8 FLAT \"f\" 0"]), to: dir.file("na.vmdk"))
        expectBlockIOError(.invalidArgument, mentioning: ["NOACCESS"]) { _ = try DiskImage.open(path: dir.file("na.vmdk"), writable: false) }

        // Same file through another spelling of its path: caught by inode.
        try writeText(descriptorText(extents: ["RW 8 FLAT \"f\" 0", "RW 8 FLAT \"./f\" 4"]), to: dir.file("alias.vmdk"))
        expectBlockIOError(.corrupt, mentioning: ["extents 1 and 2 overlap"]) { _ = try DiskImage.open(path: dir.file("alias.vmdk"), writable: false) }

        try writeText(descriptorText(extents: ["RW 1 FLAT \"self.vmdk\" 0"]), to: dir.file("self.vmdk"))
        expectBlockIOError(.corrupt, mentioning: ["names the descriptor itself"]) { _ = try DiskImage.open(path: dir.file("self.vmdk"), writable: false) }
    }

    @Test func absoluteExtentPathsAreUsedAsWritten() throws {
        let dir = try TemporaryDirectory("disk-abs")
        let other = try TemporaryDirectory("disk-abs-other")
        try makeSparseFile(other.file("data"), size: 4096)
        try writeText(descriptorText(createType: "vmfs", extents: ["RW 8 VMFS \"\(other.file("data"))\""]), to: dir.file("a.vmdk"))
        let disk = try DiskImage.open(path: dir.file("a.vmdk"), writable: true)
        #expect(disk.extents.map(\.path) == [other.file("data")])
        #expect(disk.format == .vmdk(subformat: .vmfs))
        try disk.write([1, 2, 3], at: 4093)
        #expect(try BlockFile(path: other.file("data"), mode: .readOnly).read(count: 3, at: 4093) == [1, 2, 3])
    }

    @Test func createVMDKRefusesBadSizesAndExistingFiles() throws {
        let dir = try TemporaryDirectory("disk-create-bad")
        expectBlockIOError(.invalidArgument, mentioning: ["multiple of 512", "1000"]) {
            _ = try DiskImage.createVMDK(descriptorPath: dir.file("a.vmdk"), size: 1000)
        }
        expectBlockIOError(.invalidArgument, mentioning: ["multiple of 512"]) { _ = try DiskImage.createVMDK(descriptorPath: dir.file("a.vmdk"), size: 0) }
        try makeSparseFile(dir.file("b-flat.vmdk"), size: 7)
        expectBlockIOError(.invalidArgument, mentioning: [dir.file("b-flat.vmdk"), "already exists"]) {
            _ = try DiskImage.createVMDK(descriptorPath: dir.file("b.vmdk"), size: 4096)
        }
        #expect(!DurableFile.exists(dir.file("b.vmdk")))  // nothing half-made
        #expect(try BlockFile(path: dir.file("b-flat.vmdk"), mode: .readOnly).size() == 7)  // not clobbered
    }
}
