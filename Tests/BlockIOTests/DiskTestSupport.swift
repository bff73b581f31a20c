import BlockIO
import Foundation
import Testing

/// Runs `body`, which must throw a `BlockIOError` with `code` whose message contains every
/// one of `fragments`: the messages are the user interface, so tests pin their content.
func expectBlockIOError(_ code: BlockIOError.Code, mentioning fragments: [String],
                        sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected a BlockIOError(.\(code)) mentioning \(fragments), but nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as BlockIOError {
        #expect(error.code == code, "message: \(error.message)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(error.message.contains(fragment), "\"\(fragment)\" missing from: \(error.message)", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("expected a BlockIOError, got \(error)", sourceLocation: sourceLocation)
    }
}

func writeText(_ text: String, to path: String) throws {
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

/// A sparse file of `size` bytes.
func makeSparseFile(_ path: String, size: UInt64) throws {
    let file = try BlockFile(path: path, mode: .createReadWrite)
    try file.truncate(to: size)
}

/// A descriptor in qemu-img's layout with the given extent lines.
func descriptorText(createType: String = "monolithicFlat", parentCID: String = "ffffffff", extents: [String]) -> String {
    """
    # Disk DescriptorFile
    version=1
    CID=12345678
    parentCID=\(parentCID)
    createType="\(createType)"

    # Extent description
    \(extents.joined(separator: "\n"))

    # The Disk Data Base
    #DDB

    ddb.virtualHWVersion = "4"
    ddb.adapterType = "ide"

    """
}
