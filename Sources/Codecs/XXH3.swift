// The only file that imports libxxhash.
internal import CXXHash

/// A 128-bit XXH3 digest. Chunk IDs are these; so are checksums of stored objects.
///
/// XXH3 is not a cryptographic hash: the repository trusts the hosts that write into it.
public struct Digest128: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The high 64 bits (the first 16 hex digits when printed).
    public var high: UInt64
    /// The low 64 bits.
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses 32 lowercase or uppercase hex digits.
    public init?(hex: some StringProtocol) {
        guard hex.utf8.count == 32,
              let high = UInt64(hex.prefix(16), radix: 16),
              let low = UInt64(hex.suffix(16), radix: 16) else { return nil }
        self.init(high: high, low: low)
    }

    /// 32 lowercase hex digits, high half first.
    public var hex: String {
        let h = String(high, radix: 16), l = String(low, radix: 16)
        return String(repeating: "0", count: 16 - h.count) + h + String(repeating: "0", count: 16 - l.count) + l
    }

    public var description: String { hex }

    public static func < (a: Digest128, b: Digest128) -> Bool {
        (a.high, a.low) < (b.high, b.low)
    }

    /// The 16 bytes in big-endian order (the canonical form written to disk).
    public var bigEndianBytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        for i in 0..<8 {
            out[i] = UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(i)))
            out[8 + i] = UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(i)))
        }
        return out
    }

    /// Reads 16 big-endian bytes.
    public init(bigEndianBytes bytes: some Collection<UInt8>) {
        precondition(bytes.count == 16, "a Digest128 is 16 bytes")
        var high: UInt64 = 0, low: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { high = high << 8 | UInt64(b) } else { low = low << 8 | UInt64(b) }
        }
        self.init(high: high, low: low)
    }
}

/// XXH3 hashing (libxxhash).
public enum XXH3 {
    /// Wraps XXH3_128bits.
    public static func hash128(_ bytes: UnsafeRawBufferPointer) -> Digest128 {
        let h = XXH3_128bits(bytes.baseAddress, bytes.count)
        return Digest128(high: h.high64, low: h.low64)
    }

    public static func hash128(_ bytes: [UInt8]) -> Digest128 {
        bytes.withUnsafeBytes { hash128($0) }
    }

    /// Wraps XXH3_64bits.
    public static func hash64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        XXH3_64bits(bytes.baseAddress, bytes.count)
    }

    public static func hash64(_ bytes: [UInt8]) -> UInt64 {
        bytes.withUnsafeBytes { hash64($0) }
    }
}

/// Streaming XXH3-64 for checksums over data that arrives in pieces (state files, logs).
public struct XXH3Stream64: ~Copyable {
    private let state: OpaquePointer

    /// Wraps XXH3_createState + XXH3_64bits_reset.
    public init() {
        guard let s = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        XXH3_64bits_reset(s)
        state = s
    }

    deinit { XXH3_freeState(state) }

    /// Wraps XXH3_64bits_update.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        _ = XXH3_64bits_update(state, bytes.baseAddress, bytes.count)
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Wraps XXH3_64bits_digest.
    public func finalize() -> UInt64 { XXH3_64bits_digest(state) }
}

/// Streaming XXH3-128: the hash of a whole object fed in pieces (a pack written as its
/// chunks arrive), equal to `XXH3.hash128` of the concatenation.
public struct XXH3Stream128: ~Copyable {
    private let state: OpaquePointer

    /// Wraps XXH3_createState + XXH3_128bits_reset.
    public init() {
        guard let s = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        XXH3_128bits_reset(s)
        state = s
    }

    deinit { XXH3_freeState(state) }

    /// Wraps XXH3_128bits_update.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        _ = XXH3_128bits_update(state, bytes.baseAddress, bytes.count)
    }

    /// Wraps XXH3_128bits_digest.
    public func finalize() -> Digest128 {
        let h = XXH3_128bits_digest(state)
        return Digest128(high: h.high64, low: h.low64)
    }
}
