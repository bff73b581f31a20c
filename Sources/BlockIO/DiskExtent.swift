/// One flat file holding a contiguous part of a virtual disk.
public struct DiskExtent: Sendable, Hashable, CustomStringConvertible {
    /// How a VMDK extent line lets the disk use the extent (`RW`, `RDONLY`, `NOACCESS`); a raw
    /// disk's one extent is `RW`. Whether this DiskImage may write is `DiskImage.isWritable`.
    public enum Access: String, Sendable, Hashable {
        case readWrite = "RW"
        case readOnly = "RDONLY"
        case noAccess = "NOACCESS"
    }

    /// The extent file, resolved: relative descriptor names are made relative to the descriptor's directory.
    public var path: String
    /// The bytes of the virtual disk this extent holds.
    public var range: ByteRange
    /// Where `range.offset` lives in the extent file, in bytes.
    public var fileOffset: UInt64
    public var access: Access

    public init(path: String, range: ByteRange, fileOffset: UInt64, access: Access = .readWrite) {
        self.path = path
        self.range = range
        self.fileOffset = fileOffset
        self.access = access
    }

    public var description: String { "\(path) @\(fileOffset) → disk \(range)" }
}
