import BlockIO
import Codecs
import Filter
import Foundation
import Testing
import TestSupport
import TrackerControl

/// The test's own oracle: the bytes the disk must hold and the log of every byte range
/// written (data, trim or write-zeroes) since some point.
struct DiskModel {
    var bytes: [UInt8]
    /// Every range changed, in order; `reset` starts a new round.
    var log: [ByteRange] = []
    let granularity: UInt64 = 65536

    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }
    init(bytes: [UInt8]) { self.bytes = bytes }

    var size: UInt64 { UInt64(bytes.count) }

    mutating func write(_ data: [UInt8], at offset: UInt64) {
        bytes.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data)
        log.append(ByteRange(offset: offset, length: UInt64(data.count)))
    }

    mutating func fill(_ pattern: UInt8, at offset: UInt64, length: UInt64) {
        write([UInt8](repeating: pattern, count: Int(length)), at: offset)
    }

    mutating func zero(at offset: UInt64, length: UInt64) { fill(0, at: offset, length: length) }

    /// The blocks (at the granularity) that the logged ranges touch.
    var loggedBlocks: Set<UInt64> { DiskModel.blocks(of: log, granularity: granularity) }

    static func blocks(of ranges: [ByteRange], granularity: UInt64) -> Set<UInt64> {
        var out = Set<UInt64>()
        for r in ranges where r.length > 0 {
            for b in (r.offset / granularity)...((r.end - 1) / granularity) { out.insert(b) }
        }
        return out
    }

    static func blocks(of extents: [ControlProtocol.Extent], granularity: UInt64) -> Set<UInt64> {
        blocks(of: extents.map { ByteRange(offset: $0.offset, length: $0.length) }, granularity: granularity)
    }
}

/// A hash of a whole file (to prove it did not change).
func fileHash(_ path: String) throws -> Digest128 {
    XXH3.hash128(try fileBytes(path))
}

func fileBytes(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw HarnessFailure(description: "cannot read \(path)")
    }
    return [UInt8](data)
}

/// Makes a sparse raw file of `size` bytes, optionally filled with seeded random data.
func makeDisk(_ path: String, size: UInt64, seed: UInt64? = nil) throws -> DiskModel {
    let f = try BlockFile(path: path, mode: .createReadWrite)
    try f.truncate(to: size)
    guard let seed else { return DiskModel(size: Int(size)) }
    var rng = SeededGenerator(seed: seed)
    let bytes = rng.bytes(Int(size))
    try f.write(bytes, at: 0)
    try f.sync()
    return DiskModel(bytes: bytes)
}

/// The first difference between two byte arrays, for failure messages.
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> String {
    guard a.count == b.count else { return "sizes differ: \(a.count) vs \(b.count)" }
    guard let i = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset else { return "none" }
    return "first difference at byte \(i) (block \(i / 65536)): \(a[i]) vs \(b[i])"
}

/// The set of blocks an `nbdinfo --map=CONTEXT --json` run reports dirty (type bit 1).
func nbdinfoMapBlocks(uri: String, context: String, granularity: UInt64 = 65536) throws -> Set<UInt64> {
    DiskModel.blocks(of: try nbdinfoMapRanges(uri: uri, context: context, type: 1), granularity: granularity)
}

/// The byte ranges an `nbdinfo --map=CONTEXT --json` run reports with any of the `type` bits.
func nbdinfoMapRanges(uri: String, context: String, type wanted: UInt32) throws -> [ByteRange] {
    let out = try run("nbdinfo", ["--json", "--map=\(context)", uri])
    guard let list = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] else {
        throw HarnessFailure(description: "nbdinfo --map printed no JSON list: \(out)")
    }
    var ranges: [ByteRange] = []
    var expectedOffset: UInt64 = 0
    for item in list {
        guard let offset = (item["offset"] as? NSNumber)?.uint64Value, let length = (item["length"] as? NSNumber)?.uint64Value,
              let type = (item["type"] as? NSNumber)?.uint32Value else {
            throw HarnessFailure(description: "nbdinfo --map entry without offset/length/type: \(item)")
        }
        guard offset == expectedOffset else { throw HarnessFailure(description: "nbdinfo --map extents are not consecutive at \(offset)") }
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

/// Compares big byte arrays without letting `#expect` render a diff of megabytes.
func expectSame(_ actual: [UInt8], _ expected: [UInt8], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    if actual != expected {
        Issue.record("\(what): \(firstDifference(actual, expected))", sourceLocation: sourceLocation)
    }
}
