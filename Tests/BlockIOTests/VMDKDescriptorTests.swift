import BlockIO
import Foundation
import Testing

struct VMDKDescriptorTests {
    private func parse(_ text: String) throws -> VMDKDescriptor {
        try VMDKDescriptor.parse(Array(text.utf8), source: "/d/disk.vmdk")
    }

    @Test func parsesWhatQemuImgWrites() throws {
        let d = try parse(descriptorText(createType: "twoGbMaxExtentFlat", extents: [
            "RW 4194304 FLAT \"x-f001.vmdk\" 0", "RW 2097152 FLAT \"x-f002.vmdk\" 0",
        ]))
        #expect(d.subformat == .twoGbMaxExtentFlat)
        #expect(d.contentID == 0x1234_5678)
        #expect(d.parentContentID == VMDKDescriptor.noParent)
        #expect(d.extents.map(\.fileName) == ["x-f001.vmdk", "x-f002.vmdk"])
        #expect(d.size == (4_194_304 + 2_097_152) * 512)
        #expect(d.diskDatabase["ddb.adapterType"] == "ide")
    }

    @Test func parsesVMFSAccessWordsOffsetsQuotedSpacesAndCRLF() throws {
        let text = descriptorText(createType: "vmfs", extents: [
            "RW 100 VMFS \"my disk-flat.vmdk\"", "RDONLY 8 FLAT \"other.vmdk\" 16", "NOACCESS 8 FLAT \"third.vmdk\"",
        ]).replacingOccurrences(of: "\n", with: "\r\n")
        let d = try parse(text)
        #expect(d.subformat == .vmfs)
        #expect(d.extents == [
            .init(access: .readWrite, sectors: 100, kind: .vmfs, fileName: "my disk-flat.vmdk", offsetSectors: 0),
            .init(access: .readOnly, sectors: 8, kind: .flat, fileName: "other.vmdk", offsetSectors: 16),
            .init(access: .noAccess, sectors: 8, kind: .flat, fileName: "third.vmdk", offsetSectors: 0),
        ])
    }

    @Test func renderedTextParsesBackToTheSameDescriptor() throws {
        let original = VMDKDescriptor(contentID: 0xabc, subformat: .vmfs,
                                      extents: [.init(access: .readWrite, sectors: 2048, kind: .vmfs, fileName: "a-flat.vmdk")],
                                      diskDatabase: ["ddb.adapterType": "ide"])
        let text = original.rendered()
        #expect(text.hasPrefix("# Disk DescriptorFile\nversion=1\nCID=00000abc\nparentCID=ffffffff\ncreateType=\"vmfs\"\n"))
        #expect(text.contains("\nRW 2048 VMFS \"a-flat.vmdk\"\n"))
        #expect(try parse(text) == original)
    }

    @Test func zeroPaddingAfterTheTextIsAccepted() throws {
        // What qemu-io leaves after writing to a monolithicFlat disk: the descriptor padded to 512 bytes.
        let text = descriptorText(extents: ["RW 8 FLAT \"a.vmdk\" 0"])
        let padded = Array(text.utf8) + [UInt8](repeating: 0, count: 512 - text.utf8.count)
        #expect(try VMDKDescriptor.parse(padded, source: "x").extents.count == 1)
    }

    @Test func leftoverTextAfterTheTerminatingZeroIsIgnoredAsQemuDoes() throws {
        // qemu wrote a 7-digit CID over an 8-digit one in place: the old text's last byte (a
        // newline) and its own are left behind the terminating zero. Seen in CI from qemu-io.
        let text = descriptorText(extents: ["RW 8 FLAT \"a.vmdk\" 0"])
        let rewritten = Array(text.utf8) + [0] + Array("\"\n".utf8) + [UInt8](repeating: 0, count: 512 - text.utf8.count - 3)
        let d = try VMDKDescriptor.parse(rewritten, source: "x")
        #expect(d.extents.map(\.fileName) == ["a.vmdk"])
        // Binary bytes after a zero are still "not text".
        expectBlockIOError(.corrupt, mentioning: ["not text"]) {
            _ = try VMDKDescriptor.parse(Array(text.utf8) + [0, 0x9c, 0x01], source: "x")
        }
    }

    @Test func detectionLooksAtTheFirstLinesOnly() {
        #expect(VMDKDescriptor.looksLikeDescriptor(Array("# Disk DescriptorFile\ngarbage".utf8)))
        #expect(VMDKDescriptor.looksLikeDescriptor(Array("\n# a comment\n  version=1\n".utf8)))
        #expect(!VMDKDescriptor.looksLikeDescriptor(Array("hello\nversion=1\n".utf8)))
        #expect(!VMDKDescriptor.looksLikeDescriptor([UInt8](repeating: 0, count: 512)))
        #expect(!VMDKDescriptor.looksLikeDescriptor([UInt8]()))
    }

    @Test(arguments: [
        // (descriptor, expected code, fragments the message must name)
        ("# Disk DescriptorFile\nversion=1\nthis is not a descriptor\n", BlockIOError.Code.corrupt, ["line 3", "cannot read", "this is not a descriptor"]),
        (descriptorText(extents: []), .corrupt, ["no extent lines"]),
        ("# Disk DescriptorFile\nversion=1\nRW 8 FLAT \"a.vmdk\" 0\n", .corrupt, ["no createType"]),
        (descriptorText(parentCID: "5ac0ffee", extents: ["RW 8 FLAT \"a.vmdk\" 0"]), .invalidArgument, ["parentCID=5ac0ffee", "delta", "snapshot chain"]),
        (descriptorText(createType: "monolithicSparse", extents: ["RW 8 SPARSE \"a.vmdk\""]), .invalidArgument, ["monolithicSparse", "sparse", "qemu-img convert -O vmdk -o subformat=monolithicFlat"]),
        (descriptorText(createType: "streamOptimized", extents: ["RW 8 SPARSE \"a.vmdk\""]), .invalidArgument, ["streamOptimized", "qemu-img convert"]),
        (descriptorText(createType: "seSparse", extents: ["RW 8 SESPARSE \"a.vmdk\""]), .invalidArgument, ["seSparse", "qemu-img convert"]),
        (descriptorText(createType: "fullDevice", extents: ["RW 8 FLAT \"/dev/sda\" 0"]), .invalidArgument, ["fullDevice", "not supported", "monolithicFlat, twoGbMaxExtentFlat and vmfs"]),
        (descriptorText(extents: ["RW 8 VMFSSPARSE \"a.vmdk\""]), .invalidArgument, ["line 8", "VMFSSPARSE", "sparse"]),
        (descriptorText(extents: ["RW 8 VMFSRDM \"a.vmdk\""]), .invalidArgument, ["VMFSRDM", "not supported"]),
        (descriptorText(extents: ["RW 8 WEIRD \"a.vmdk\" 0"]), .corrupt, ["unknown extent type", "WEIRD"]),
        (descriptorText(extents: ["RW 99999999999999999999999 FLAT \"a.vmdk\" 0"]), .corrupt, ["99999999999999999999999", "fits in 64 bits"]),
        (descriptorText(extents: ["RW 18014398509481984 FLAT \"a.vmdk\" 0"]), .corrupt, ["18014398509481984 sectors", "more than a file can hold"]),
        (descriptorText(extents: ["RW 18014398509481983 FLAT \"a.vmdk\" 0", "RW 18014398509481983 FLAT \"b.vmdk\" 0"]), .corrupt, ["extent 2", "larger than"]),
        (descriptorText(extents: ["RW 8 FLAT \"a.vmdk\" 18014398509481980"]), .corrupt, ["runs past the largest possible file"]),
        (descriptorText(extents: ["RW 8 FLAT \"a.vmdk\" -1"]), .corrupt, ["file offset \"-1\""]),
        (descriptorText(extents: ["RW 0 FLAT \"a.vmdk\" 0"]), .corrupt, ["0 sectors"]),
        (descriptorText(extents: ["RW 8 FLAT a.vmdk 0"]), .corrupt, ["double quotes"]),
        (descriptorText(extents: ["RW 8 FLAT \"\" 0"]), .corrupt, ["file name is empty"]),
        ("# Disk DescriptorFile\nversion=7\ncreateType=\"vmfs\"\n", .invalidArgument, ["version \"7\"", "not supported"]),
        ("# Disk DescriptorFile\nversion=1\nCID=zz\n", .corrupt, ["CID=\"zz\"", "hexadecimal"]),
        ("# Disk DescriptorFile\nversion=1\ncreateType=\"vmfs\"\ncreateType=\"vmfs\"\n", .corrupt, ["createType appears twice"]),
        ("# Disk DescriptorFile\nversion=1\u{0}\u{1}\u{2}", .corrupt, ["not text", "offset 31"]),
    ])
    func refusesWithAClearMessage(text: String, code: BlockIOError.Code, fragments: [String]) {
        expectBlockIOError(code, mentioning: ["/d/disk.vmdk"] + fragments) { _ = try parse(text) }
    }

    @Test func refusesInvalidUTF8AndOversizedText() {
        expectBlockIOError(.corrupt, mentioning: ["not valid UTF-8"]) {
            _ = try VMDKDescriptor.parse(Array("# Disk DescriptorFile\n".utf8) + [0xff, 0xfe, 0x41], source: "x")
        }
        let big = [UInt8](repeating: UInt8(ascii: "#"), count: VMDKDescriptor.sizeLimit + 1)
        expectBlockIOError(.corrupt, mentioning: ["65537 bytes", "65536-byte limit"]) {
            _ = try VMDKDescriptor.parse(big, source: "x")
        }
    }
}
