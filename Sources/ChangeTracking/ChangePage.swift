import BlockIO

/// One page of a change query (VMware's `QueryChangedDiskAreas` startOffset/length paging).
///
/// `processed` starts at the (block-aligned) start of the queried range; every changed block
/// inside `processed` is in `extents`, nothing outside it is. When `processed` ends before the
/// queried range does, ask again from `processed.end`.
public struct ChangePage: Sendable, Hashable {
    public var extents: [ChangedExtent]
    public var processed: ByteRange

    /// The most extents a page holds unless the caller asks for another limit.
    public static let defaultExtentLimit = 65536

    public init(extents: [ChangedExtent], processed: ByteRange) {
        self.extents = extents
        self.processed = processed
    }
}
