import BlockIO

/// A run of changed blocks, aligned to the granularity and clipped at the end of the disk.
public struct ChangedExtent: Hashable, Sendable, CustomStringConvertible {
    public var range: ByteRange
    /// True when the last change of every block in the range was a trim or write-zeroes that
    /// covered the whole block: the range reads as zeroes, an agent may skip reading it.
    public var readsAsZero: Bool

    public init(range: ByteRange, readsAsZero: Bool) {
        self.range = range
        self.readsAsZero = readsAsZero
    }

    public var description: String { readsAsZero ? "\(range) zero" : "\(range)" }
}
