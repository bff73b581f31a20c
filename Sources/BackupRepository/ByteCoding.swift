import Codecs

/// Little-endian binary writer for the repository's object formats.
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func ascii(_ s: StaticString) {
        s.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }
    /// Digests are written big-endian (their printed order), like everywhere on disk.
    mutating func digest(_ d: Digest128) {
        withUnsafeBytes(of: d.high.bigEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: d.low.bigEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    mutating func append(_ b: UnsafeRawBufferPointer) { bytes.append(contentsOf: b) }
}

/// Reads past the end of the data: the object is truncated or a length field is wrong.
struct ShortData: Error {}

/// Little-endian binary reader over a byte array; every read is bounds-checked.
struct ByteReader {
    let bytes: [UInt8]
    var offset: Int

    init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    var remaining: Int { bytes.count - offset }

    private mutating func take(_ n: Int) throws(ShortData) -> Int {
        guard n >= 0, offset <= bytes.count - n else { throw ShortData() }
        defer { offset += n }
        return offset
    }

    mutating func u8() throws(ShortData) -> UInt8 { bytes[try take(1)] }
    mutating func u16() throws(ShortData) -> UInt16 {
        let at = try take(2)
        return UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8
    }
    mutating func u32() throws(ShortData) -> UInt32 {
        let at = try take(4)
        var v: UInt32 = 0
        for i in (0..<4).reversed() { v = v << 8 | UInt32(bytes[at + i]) }
        return v
    }
    mutating func u64() throws(ShortData) -> UInt64 {
        let at = try take(8)
        var v: UInt64 = 0
        for i in (0..<8).reversed() { v = v << 8 | UInt64(bytes[at + i]) }
        return v
    }
    mutating func digest() throws(ShortData) -> Digest128 {
        let at = try take(16)
        return bytes.withUnsafeBytes { b in
            Digest128(high: UInt64(bigEndian: b.loadUnaligned(fromByteOffset: at, as: UInt64.self)),
                      low: UInt64(bigEndian: b.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self)))
        }
    }
    mutating func bytes(_ n: Int) throws(ShortData) -> ArraySlice<UInt8> {
        let at = try take(n)
        return bytes[at..<at + n]
    }
    mutating func expect(_ magic: StaticString) throws(ShortData) -> Bool {
        let n = magic.utf8CodeUnitCount
        let at = try take(n)
        return magic.withUTF8Buffer { Array($0) == Array(bytes[at..<at + n]) }
    }
}
