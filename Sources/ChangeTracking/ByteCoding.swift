#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Appends little-endian fields to a byte array (the state file and log layouts).
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func uuid(_ u: UUID) { withUnsafeBytes(of: u.uuid) { bytes.append(contentsOf: $0) } }
    mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    mutating func words(_ w: [UInt64]) {
        #if _endian(little)
        w.withUnsafeBytes { bytes.append(contentsOf: $0) }
        #else
        for v in w { u64(v) }
        #endif
    }
}

/// Reads little-endian fields; running past the end is a `truncated` error, never a crash.
struct ByteReader {
    struct Truncated: Error {}

    let bytes: [UInt8]
    var offset: Int

    init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    var remaining: Int { bytes.count - offset }

    mutating func take(_ n: Int) throws(Truncated) -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw Truncated() }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    mutating func u32() throws(Truncated) -> UInt32 {
        let s = try take(4)
        return s.reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func u64() throws(Truncated) -> UInt64 {
        let s = try take(8)
        return s.reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    mutating func i64() throws(Truncated) -> Int64 { Int64(bitPattern: try u64()) }

    mutating func uuid() throws(Truncated) -> UUID {
        let s = Array(try take(16))
        return UUID(uuid: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]))
    }

    mutating func words(_ count: Int) throws(Truncated) -> [UInt64] {
        guard count >= 0, count <= remaining / 8 else { throw Truncated() }
        var out = [UInt64](repeating: 0, count: count)
        out.withUnsafeMutableBytes { dst in
            bytes.withUnsafeBytes { src in
                dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[offset..<offset + count * 8]))
            }
        }
        #if !_endian(little)
        for i in out.indices { out[i] = UInt64(littleEndian: out[i]) }
        #endif
        offset += count * 8
        return out
    }
}
