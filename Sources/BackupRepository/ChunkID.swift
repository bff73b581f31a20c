import Codecs
#if canImport(Glibc)
import Glibc
#endif

/// A chunk's ID: XXH3-128 of its uncompressed bytes.
public typealias ChunkID = Digest128

/// A disk map's ID: XXH3-128 of the stored map object.
public typealias DiskMapID = Digest128

/// A pack's ID: XXH3-128 of the whole pack file.
public typealias PackID = Digest128

/// What `RepositoryWriter.store` did with a chunk.
public enum StoreOutcome: Sendable, Equatable {
    /// The chunk was new; `storedBytes` is its size in the pack (envelope header included).
    case new(storedBytes: Int)
    /// The repository (or this writer) already holds the chunk.
    case duplicate
    /// The chunk is all zeroes: nothing is stored; the disk map entry must be `nil`.
    case zero
}

/// Where a chunk lives: its pack and the byte range of its envelope in that pack.
public struct ChunkLocation: Sendable, Equatable {
    public var pack: PackID
    public var offset: UInt64
    public var length: Int

    public init(pack: PackID, offset: UInt64, length: Int) {
        self.pack = pack
        self.offset = offset
        self.length = length
    }
}

extension Digest128 {
    /// The all-zero digest: the in-memory marker of a zero chunk in a disk map.
    static let zero = Digest128(high: 0, low: 0)

    /// A short form for messages (the first 12 hex digits).
    var short: String { String(hex.prefix(12)) }
}

/// True when every byte is zero (such chunks are never stored).
/// memcmp against a zero block keeps this at memory speed even in debug builds.
func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard let base = bytes.baseAddress else { return true }
    return zeroBlock.withUnsafeBytes { zero in
        var at = 0
        while at < bytes.count {
            let n = min(zero.count, bytes.count - at)
            if memcmp(base + at, zero.baseAddress!, n) != 0 { return false }
            at += n
        }
        return true
    }
}

private let zeroBlock = [UInt8](repeating: 0, count: 16384)

/// Random 128-bit hex names (snapshot and lock IDs).
func randomHexID() -> String {
    var g = SystemRandomNumberGenerator()
    return Digest128(high: g.next(), low: g.next()).hex
}

/// True for 1...64 lowercase hex digits: the only names objects may have.
func isHexName(_ s: String) -> Bool {
    !s.isEmpty && s.utf8.count <= 64 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
}
