/// The on-disk layout of a virtual disk: a raw file, or a VMDK descriptor naming flat extents.
public enum DiskFormat: Sendable, Hashable, CustomStringConvertible {
    /// One flat file; the disk size is the file size.
    case raw
    /// A VMDK text descriptor with one or more flat extents.
    case vmdk(subformat: VMDKSubformat)

    public var description: String {
        switch self {
        case .raw: return "raw"
        case .vmdk(let subformat): return "vmdk (\(subformat.rawValue))"
        }
    }
}

/// The VMDK `createType`s whose data lives in flat extents, the only ones Tessera reads.
public enum VMDKSubformat: String, Sendable, Hashable, CaseIterable {
    /// One `FLAT` extent file (`disk-flat.vmdk`), as qemu-img and Workstation write it.
    case monolithicFlat
    /// `FLAT` extents of at most 2 GiB each (`disk-f001.vmdk`, ...), for file systems with a size limit.
    case twoGbMaxExtentFlat
    /// An ESXi datastore disk: one `VMFS` extent (`disk-flat.vmdk`) without a file offset.
    case vmfs
}
