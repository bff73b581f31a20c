import BlockIO
import Codecs
import Foundation
import Testing

/// A test's own oracle for a disk: the bytes it must hold, and the log of every byte range
/// changed (data, trim or write-zeroes) since the log was last reset. A test updates it
/// alongside every write it makes through a filter, an NBD client or qemu-io, then compares
/// the disk, a restore or an export with it, and the tracker's changes with its log.
public struct DiskModel: Sendable, Equatable {
    public var bytes: [UInt8]
    /// Every range changed, in order (`resetLog` starts a new round).
    public var log: [ByteRange] = []
    /// The tracker's granularity and the repository's chunk size in these tests.
    public var blockSize: Int

    public init(size: Int, blockSize: Int = 65536) {
        self.init(bytes: [UInt8](repeating: 0, count: size), blockSize: blockSize)
    }

    public init(bytes: [UInt8], blockSize: Int = 65536) {
        self.bytes = bytes
        self.blockSize = blockSize
    }

    /// The model of a file as it is now.
    public init(contentsOf path: String, blockSize: Int = 65536) throws {
        self.init(bytes: try fileBytes(path), blockSize: blockSize)
    }

    public var size: UInt64 { UInt64(bytes.count) }
    public var data: Data { Data(bytes) }
    public var hash: Digest128 { XXH3.hash128(bytes) }

    // MARK: - Changes (each one logged)

    public mutating func write(_ data: some Collection<UInt8>, at offset: UInt64) {
        bytes.replaceSubrange(Int(offset)..<Int(offset) + data.count, with: data)
        log.append(ByteRange(offset: offset, length: UInt64(data.count)))
    }

    /// `length` bytes of `value` (what `qemu-io write -P VALUE` writes).
    public mutating func fill(_ value: UInt8, at offset: UInt64, length: UInt64) {
        write(repeatElement(value, count: Int(length)), at: offset)
    }

    public mutating func zero(at offset: UInt64, length: UInt64) { fill(0, at: offset, length: length) }

    /// Seeded random (incompressible) bytes.
    public mutating func randomize(at offset: UInt64, length: Int, using rng: inout SeededGenerator) {
        write(rng.bytes(length), at: offset)
    }

    public mutating func resetLog() { log.removeAll() }

    // MARK: - Blocks

    public var blockCount: Int { (bytes.count + blockSize - 1) / blockSize }

    /// Block (chunk) `i`; the last one may be short.
    public func block(_ i: Int) -> ArraySlice<UInt8> {
        bytes[i * blockSize..<min((i + 1) * blockSize, bytes.count)]
    }

    /// The blocks the logged ranges touch.
    public var loggedBlocks: Set<UInt64> { DiskModel.blocks(of: log, granularity: UInt64(blockSize)) }

    /// The blocks of `granularity` bytes that `ranges` touch.
    public static func blocks(of ranges: [ByteRange], granularity: UInt64 = 65536) -> Set<UInt64> {
        var out = Set<UInt64>()
        for r in ranges where r.length > 0 {
            for b in (r.offset / granularity)...((r.end - 1) / granularity) { out.insert(b) }
        }
        return out
    }

    // MARK: - Seeded contents

    /// What a block of a seeded disk holds.
    public enum Fill: Sendable {
        case zero
        /// Bytes zstd compresses well: one random word repeated, drifting every 512 bytes.
        case compressible
        /// Random bytes, stored raw.
        case random
    }

    /// A disk of `size` bytes whose blocks `pick` fills, in order, from one generator seeded
    /// with `seed` (the same seed gives the same disk). By default every block is random.
    public static func seeded(size: Int, seed: UInt64, blockSize: Int = 65536,
                              _ pick: (_ block: Int, _ rng: inout SeededGenerator) -> Fill = { _, _ in .random }) -> DiskModel {
        var g = SeededGenerator(seed: seed)
        var model = DiskModel(size: size, blockSize: blockSize)
        for i in 0..<model.blockCount {
            let at = i * blockSize, n = min(blockSize, size - at)
            switch pick(i, &g) {
            case .zero: break
            case .compressible:
                let word = g.next()
                for j in 0..<n { model.bytes[at + j] = UInt8(truncatingIfNeeded: word >> (8 * UInt64(j % 8))) &+ UInt8(j / 512) }
            case .random:
                model.bytes.replaceSubrange(at..<at + n, with: g.bytes(n))
            }
        }
        return model
    }

    /// A disk of seeded blocks in shares: `zeroShare` percent zero, 25 percent compressible,
    /// the rest random (the mix a repository test wants: holes, zstd and raw chunks).
    public static func mixed(size: Int, seed: UInt64, blockSize: Int = 65536, zeroShare: Int = 25) -> DiskModel {
        seeded(size: size, seed: seed, blockSize: blockSize) { _, g in
            let pick = Int(g.next() % 100)
            return pick < zeroShare ? .zero : pick < zeroShare + 25 ? .compressible : .random
        }
    }

    /// Overwrites block `i` with random bytes from a generator seeded with `seed` (logged).
    public mutating func scribble(block i: Int, seed: UInt64) {
        var g = SeededGenerator(seed: seed)
        let at = i * blockSize, n = min(blockSize, bytes.count - at)
        write(g.bytes(n), at: UInt64(at))
    }

    // MARK: - Files

    /// Writes the model to `path` (the same file if it exists, its old bytes gone): sparse,
    /// all-zero blocks are left as holes unless `holes` is false.
    public func write(to path: String, holes: Bool = true) throws {
        let file = try BlockFile(path: path, mode: .createReadWrite)
        try file.truncate(to: 0)
        try file.truncate(to: size)
        for i in 0..<blockCount {
            let block = block(i)
            if holes && block.allSatisfy({ $0 == 0 }) { continue }
            try file.write(Array(block), at: UInt64(i * blockSize))
        }
        try file.sync()
    }

    /// A new sparse file of `size` bytes at `path`, random from `seed` when one is given
    /// (zero otherwise), and its model.
    @discardableResult
    public static func create(at path: String, size: UInt64, seed: UInt64? = nil) throws -> DiskModel {
        let model = seed.map { DiskModel.seeded(size: Int(size), seed: $0) } ?? DiskModel(size: Int(size))
        try model.write(to: path)
        return model
    }
}

/// Every byte of a file.
public func fileBytes(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw CommandError(description: "cannot read \(path)")
    }
    return [UInt8](data)
}

/// Where two byte sequences first differ, for failure messages: "sizes differ: A vs B",
/// "first difference at byte N (block B): X vs Y", or "none".
public func firstDifference(_ a: some Collection<UInt8>, _ b: some Collection<UInt8>, blockSize: Int = 65536) -> String {
    guard a.count == b.count else { return "sizes differ: \(a.count) vs \(b.count)" }
    guard let (i, (x, y)) = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 }) else { return "none" }
    let differing = zip(a, b).reduce(0) { $0 + ($1.0 != $1.1 ? 1 : 0) }
    return "first difference at byte \(i) (block \(i / blockSize)): \(x) vs \(y); \(differing) bytes differ"
}

/// Compares two disks (or files, exports, restores) without letting `#expect` render
/// megabytes: a mismatch is recorded with where the bytes first differ.
public func expectSame(_ actual: some Collection<UInt8>, _ expected: some Collection<UInt8>, _ what: String,
                       sourceLocation: SourceLocation = #_sourceLocation) {
    if !actual.elementsEqual(expected) {
        Issue.record("\(what): \(firstDifference(actual, expected))", sourceLocation: sourceLocation)
    }
}
