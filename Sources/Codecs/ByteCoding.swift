#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Appends little-endian fields to a byte array: the one writer for every binary layout
/// (tracker state and activity log, overlay records, control headers, repository objects).
public struct ByteWriter {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func uuid(_ u: UUID) { withUnsafeBytes(of: u.uuid) { bytes.append(contentsOf: $0) } }
    public mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    public mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    public mutating func append(_ b: UnsafeRawBufferPointer) { bytes.append(contentsOf: b) }
    public mutating func ascii(_ s: StaticString) { s.withUTF8Buffer { bytes.append(contentsOf: $0) } }

    /// Digests are written big-endian (their printed order), like everywhere on disk.
    public mutating func digest(_ d: Digest128) {
        withUnsafeBytes(of: d.high.bigEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: d.low.bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// An array of 64-bit words, little-endian.
    public mutating func words(_ w: [UInt64]) {
        #if _endian(little)
        w.withUnsafeBytes { bytes.append(contentsOf: $0) }
        #else
        for v in w { u64(v) }
        #endif
    }
}

/// A read past the end of the data: the object is truncated or a length field is wrong.
public struct ShortData: Error, Sendable {
    public init() {}
}

/// Reads little-endian fields; every read is bounds-checked, so running past the end is a
/// `ShortData` error, never a crash.
public struct ByteReader {
    public let bytes: [UInt8]
    public var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }

    /// The next `n` bytes.
    public mutating func take(_ n: Int) throws(ShortData) -> ArraySlice<UInt8> {
        guard n >= 0, offset <= bytes.count - n else { throw ShortData() }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    public mutating func bytes(_ n: Int) throws(ShortData) -> ArraySlice<UInt8> { try take(n) }

    private mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(ShortData) -> T {
        let s = try take(MemoryLayout<T>.size)
        var v: T = 0
        for b in s.reversed() { v = v << 8 | T(b) }
        return v
    }

    public mutating func u8() throws(ShortData) -> UInt8 { try integer(UInt8.self) }
    public mutating func u16() throws(ShortData) -> UInt16 { try integer(UInt16.self) }
    public mutating func u32() throws(ShortData) -> UInt32 { try integer(UInt32.self) }
    public mutating func u64() throws(ShortData) -> UInt64 { try integer(UInt64.self) }
    public mutating func i64() throws(ShortData) -> Int64 { Int64(bitPattern: try u64()) }

    public mutating func uuid() throws(ShortData) -> UUID {
        let s = Array(try take(16))
        return UUID(uuid: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]))
    }

    public mutating func digest() throws(ShortData) -> Digest128 {
        let s = try take(16)
        return Digest128(bigEndianBytes: s)
    }

    /// True when the next bytes are `magic` (consumed either way).
    public mutating func expect(_ magic: StaticString) throws(ShortData) -> Bool {
        let s = try take(magic.utf8CodeUnitCount)
        return magic.withUTF8Buffer { Array($0) == Array(s) }
    }

    /// `count` 64-bit little-endian words.
    public mutating func words(_ count: Int) throws(ShortData) -> [UInt64] {
        guard count >= 0, count <= remaining / 8 else { throw ShortData() }
        var out = [UInt64](repeating: 0, count: count)
        let start = offset
        out.withUnsafeMutableBytes { dst in
            bytes.withUnsafeBytes { src in
                dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + count * 8]))
            }
        }
        #if !_endian(little)
        for i in out.indices { out[i] = UInt64(littleEndian: out[i]) }
        #endif
        offset += count * 8
        return out
    }
}
