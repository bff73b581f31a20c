/// Little-endian field writer for the filter's small binary records.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
}

/// Little-endian field reader; reading past the end yields zeroes (callers verify a checksum
/// or a length first, so a short input is caught there, never as a crash).
struct ByteReader {
    private let bytes: [UInt8]
    private(set) var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { max(0, bytes.count - position) }

    private mutating func take<T: FixedWidthInteger>(_: T.Type) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size {
            let b = position + i < bytes.count ? bytes[position + i] : 0
            v |= T(b) << (8 * i)
        }
        position += MemoryLayout<T>.size
        return v
    }

    mutating func u16() -> UInt16 { take(UInt16.self) }
    mutating func u32() -> UInt32 { take(UInt32.self) }
    mutating func u64() -> UInt64 { take(UInt64.self) }
}
