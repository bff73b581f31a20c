import BlockIO
import Foundation
import Testing
import TestSupport

/// DiskImage against qemu-img / qemu-io, the reference reader and writer of VMDK.
struct DiskImageInteropTests {
    private static let gib: UInt64 = 1 << 30

    @discardableResult
    private func qemu(_ program: String, _ arguments: [String]) throws -> String {
        let result = try runCommand(program, arguments)
        #expect(result.succeeded, "\(program) \(arguments.joined(separator: " ")) failed: \(result.stdout)\(result.stderr)")
        #expect(!result.stdout.contains("verification failed"), "\(result.stdout)")
        return result.stdout
    }

    private func qemuInfo(_ path: String) throws -> [String: Any] {
        let json = try qemu("qemu-img", ["info", "--output=json", path])
        return try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io")))
    func readsAMonolithicFlatDiskWrittenByQemu() throws {
        let dir = try TemporaryDirectory("interop-mono")
        let path = dir.file("m.vmdk")
        try qemu("qemu-img", ["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", path, "4M"])
        try qemu("qemu-io", ["-f", "vmdk", "-c", "write -P 0xab 1M 64k", "-c", "write -P 0x11 4000k 96k", path])
        let disk = try DiskImage.open(path: path, writable: false)
        #expect(disk.format == .vmdk(subformat: .monolithicFlat))
        #expect(disk.size == 4 << 20)
        #expect(disk.extents.map(\.path) == [dir.file("m-flat.vmdk")])
        var expected = [UInt8](repeating: 0, count: 4 << 20)
        expected.replaceSubrange((1 << 20)..<(1 << 20) + 65536, with: repeatElement(0xab, count: 65536))
        expected.replaceSubrange(4_096_000..<4_096_000 + 98_304, with: repeatElement(0x11, count: 98_304))
        #expect(try disk.read(count: expected.count, at: 0) == expected)
    }

    /// 5 GiB, sparse: qemu-img makes three extents (2 GiB, 2 GiB, 1 GiB).
    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io")))
    func readsAndWritesATwoGbMaxExtentFlatDiskAcrossExtentBoundaries() throws {
        let dir = try TemporaryDirectory("interop-2gb")
        let path = dir.file("x.vmdk")
        try qemu("qemu-img", ["create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat", path, "5G"])
        // qemu writes across the first boundary; DiskImage must read it back from two files.
        try qemu("qemu-io", ["-f", "vmdk", "-c", "write -P 0x5a 2097120k 64k", "-c", "write -P 0x33 4608M 4k", path])

        let disk = try DiskImage.open(path: path, writable: true)
        #expect(disk.format == .vmdk(subformat: .twoGbMaxExtentFlat))
        #expect(disk.size == 5 * Self.gib)
        #expect(disk.extents.map(\.range.length) == [2 * Self.gib, 2 * Self.gib, Self.gib])
        #expect(disk.extents.map(\.path) == ["x-f001.vmdk", "x-f002.vmdk", "x-f003.vmdk"].map(dir.file))
        let boundary = 2 * Self.gib
        #expect(try disk.read(count: 65536, at: boundary - 32768) == [UInt8](repeating: 0x5a, count: 65536))
        #expect(try disk.read(count: 8, at: boundary - 32769) == [0] + [UInt8](repeating: 0x5a, count: 7))
        #expect(try disk.read(count: 4096, at: 4608 << 20) == [UInt8](repeating: 0x33, count: 4096))

        let data = try disk.dataRanges(in: ByteRange(offset: 0, length: disk.size))
        #expect(data.contains { $0.contains(ByteRange(offset: boundary - 32768, length: 65536)) }, "\(data)")
        #expect(data.contains { $0.contains(ByteRange(offset: 4608 << 20, length: 4096)) }, "\(data)")
        #expect(data.totalLength < 1 << 20, "a sparse 5 GiB disk with 68 KiB written reports \(data)")

        // DiskImage writes across the second boundary; qemu-io verifies the pattern.
        try disk.write([UInt8](repeating: 0x77, count: 8192), at: 4 * Self.gib - 4096)
        try disk.sync()
        try qemu("qemu-io", ["-f", "vmdk", "-r", "-c", "read -P 0x77 4194300k 8k", "-c", "read -P 0 4194308k 4k", path])
        // And the bytes really are split between the two files.
        #expect(try BlockFile(path: dir.file("x-f002.vmdk"), mode: .readOnly).read(count: 4096, at: 2 * Self.gib - 4096) == [UInt8](repeating: 0x77, count: 4096))
        #expect(try BlockFile(path: dir.file("x-f003.vmdk"), mode: .readOnly).read(count: 4096, at: 0) == [UInt8](repeating: 0x77, count: 4096))
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img")), arguments: [
        (VMDKSubformat.monolithicFlat, UInt64(8 << 20)),
        (.vmfs, UInt64(8 << 20)),
        (.twoGbMaxExtentFlat, UInt64(2 << 30) + (1 << 20)),
    ])
    func createdVMDKIsReadByQemuImg(subformat: VMDKSubformat, size: UInt64) throws {
        let dir = try TemporaryDirectory("interop-create")
        let path = dir.file("made.vmdk")
        let disk = try DiskImage.createVMDK(descriptorPath: path, size: size, subformat: subformat)
        let raw = try DiskImage.createRaw(path: dir.file("same.raw"), size: size)
        #expect(disk.format == .vmdk(subformat: subformat))
        #expect(disk.extents.count == (subformat == .twoGbMaxExtentFlat ? 2 : 1))

        // Same seeded data in both, including a write across the 2 GiB boundary when there is one.
        var rng = SeededGenerator(seed: 42)
        let offsets: [UInt64] = [0, 4096 * 100, size - 70_000, min(size - 70_000, (2 << 30) - 30_000)]
        for offset in offsets {
            let bytes = rng.bytes(70_000)
            try disk.write(bytes, at: offset)
            try raw.write(bytes, at: offset)
        }
        try disk.sync()
        try raw.sync()

        let info = try qemuInfo(path)
        #expect(info["format"] as? String == "vmdk")
        #expect((info["virtual-size"] as? NSNumber)?.uint64Value == size)
        let specific = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any]
        #expect(specific?["create-type"] as? String == subformat.rawValue)
        try qemu("qemu-img", ["compare", "-q", "-f", "vmdk", "-F", "raw", path, dir.file("same.raw")])

        // The converse: qemu-img converts our VMDK to raw, byte-identical to the raw image.
        try qemu("qemu-img", ["convert", "-f", "vmdk", "-O", "raw", path, dir.file("converted.raw")])
        let converted = try DiskImage.open(path: dir.file("converted.raw"), writable: false)
        #expect(converted.size == size)
        for offset in offsets {
            #expect(try converted.read(count: 70_000, at: offset) == raw.read(count: 70_000, at: offset))
        }
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "qemu-io")))
    func handWrittenVMFSDescriptorIsReadByBothSides() throws {
        let dir = try TemporaryDirectory("interop-vmfs")
        try makeSparseFile(dir.file("esx-flat.vmdk"), size: 2 << 20)
        let path = dir.file("esx.vmdk")
        try writeText("""
            # Disk DescriptorFile
            version=1
            encoding="UTF-8"
            CID=fffffffe
            parentCID=ffffffff
            isNativeSnapshot="no"
            createType="vmfs"

            # Extent description
            RW 4096 VMFS "esx-flat.vmdk"

            # The Disk Data Base
            #DDB

            ddb.adapterType = "lsilogic"
            ddb.geometry.cylinders = "2"
            ddb.geometry.heads = "255"
            ddb.geometry.sectors = "63"
            ddb.thinProvisioned = "1"
            ddb.uuid = "60 00 C2 9a 11 22 33 44-55 66 77 88 99 aa bb cc"
            ddb.virtualHWVersion = "14"

            """, to: path)
        try qemu("qemu-io", ["-f", "vmdk", "-c", "write -P 0x42 1020k 8k", path])
        let disk = try DiskImage.open(path: path, writable: true)
        #expect(disk.format == .vmdk(subformat: .vmfs))
        #expect(disk.size == 2 << 20)
        #expect(try disk.read(count: 8192, at: 1020 << 10) == [UInt8](repeating: 0x42, count: 8192))
        try disk.write([UInt8](repeating: 0x24, count: 4096), at: (2 << 20) - 4096)
        try disk.sync()
        try qemu("qemu-io", ["-f", "vmdk", "-r", "-c", "read -P 0x24 2044k 4k", "-c", "read -P 0x42 1020k 8k", path])
    }
}
