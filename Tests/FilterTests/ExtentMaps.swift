import BlockIO
import Codecs
import Foundation
import TestSupport
import TrackerControl

extension DiskModel {
    /// The blocks of `granularity` bytes that the filter's reported extents touch.
    static func blocks(of extents: [ControlProtocol.Extent], granularity: UInt64 = 65536) -> Set<UInt64> {
        blocks(of: extents.map { ByteRange(offset: $0.offset, length: $0.length) }, granularity: granularity)
    }
}

/// A hash of a whole file (to prove it did not change).
func fileHash(_ path: String) throws -> Digest128 {
    XXH3.hash128(try fileBytes(path))
}

/// The set of blocks an `nbdinfo --map=CONTEXT --json` run reports dirty (type bit 1).
func nbdinfoMapBlocks(uri: String, context: String, granularity: UInt64 = 65536) throws -> Set<UInt64> {
    DiskModel.blocks(of: try nbdinfoMapRanges(uri: uri, context: context, type: 1), granularity: granularity)
}

/// The byte ranges an `nbdinfo --map=CONTEXT --json` run reports with any of the `type` bits.
func nbdinfoMapRanges(uri: String, context: String, type wanted: UInt32) throws -> [ByteRange] {
    let out = try run("nbdinfo", ["--json", "--map=\(context)", uri])
    guard let list = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] else {
        throw CommandError(description: "nbdinfo --map printed no JSON list: \(out)")
    }
    var ranges: [ByteRange] = []
    var expectedOffset: UInt64 = 0
    for item in list {
        guard let offset = (item["offset"] as? NSNumber)?.uint64Value, let length = (item["length"] as? NSNumber)?.uint64Value,
              let type = (item["type"] as? NSNumber)?.uint32Value else {
            throw CommandError(description: "nbdinfo --map entry without offset/length/type: \(item)")
        }
        guard offset == expectedOffset else { throw CommandError(description: "nbdinfo --map extents are not consecutive at \(offset)") }
        expectedOffset = offset + length
        if type & wanted != 0 { ranges.append(ByteRange(offset: offset, length: length)) }
    }
    return ranges
}

/// Renders a block set compactly for failure messages.
func describe(_ blocks: Set<UInt64>) -> String {
    let sorted = blocks.sorted()
    return sorted.count > 40 ? "\(sorted.prefix(40))... (\(sorted.count) blocks)" : "\(sorted)"
}
