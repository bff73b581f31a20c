/// A half-open range of bytes on a disk: `[offset, offset + length)`.
///
/// Bytes and blocks are kept apart in names: a `ByteRange` is always in bytes;
/// bitmap positions are `block` / `blockIndex`.
public struct ByteRange: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var offset: UInt64
    public var length: UInt64

    public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
    }

    /// The first byte after the range.
    public var end: UInt64 { offset + length }
    public var isEmpty: Bool { length == 0 }

    public var description: String { "[\(offset), \(end))" }

    public static func < (a: ByteRange, b: ByteRange) -> Bool {
        (a.offset, a.length) < (b.offset, b.length)
    }

    public func contains(_ byte: UInt64) -> Bool { byte >= offset && byte < end }

    /// Whether every byte of `other` is inside this range.
    public func contains(_ other: ByteRange) -> Bool {
        other.isEmpty || (other.offset >= offset && other.end <= end)
    }

    public func overlaps(_ other: ByteRange) -> Bool {
        offset < other.end && other.offset < end
    }

    /// The common part, or nil when the ranges do not overlap.
    public func intersection(_ other: ByteRange) -> ByteRange? {
        let lo = max(offset, other.offset), hi = min(end, other.end)
        return lo < hi ? ByteRange(offset: lo, length: hi - lo) : nil
    }

    /// The range grown outward to multiples of `alignment` (a power of two),
    /// then clipped at `limit` (the disk size).
    public func alignedOutward(to alignment: UInt64, clippedAt limit: UInt64) -> ByteRange {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        let lo = offset & ~(alignment - 1)
        let hiUnclipped = (end + alignment - 1) & ~(alignment - 1)
        let hi = min(hiUnclipped, limit)
        return lo < hi ? ByteRange(offset: lo, length: hi - lo) : ByteRange(offset: min(lo, limit), length: 0)
    }
}

extension Array where Element == ByteRange {
    /// Sorted, with touching or overlapping ranges merged and empty ones dropped.
    public func coalesced() -> [ByteRange] {
        let sorted = self.filter { !$0.isEmpty }.sorted()
        var out: [ByteRange] = []
        out.reserveCapacity(sorted.count)
        for r in sorted {
            if let last = out.last, r.offset <= last.end {
                out[out.count - 1].length = Swift.max(last.end, r.end) - last.offset
            } else {
                out.append(r)
            }
        }
        return out
    }

    /// Total bytes covered (assumes the ranges do not overlap).
    public var totalLength: UInt64 { reduce(0) { $0 + $1.length } }
}
