/// One virtual disk made of one or more flat extents: a raw file, or a VMDK descriptor
/// naming flat extent files (monolithicFlat, twoGbMaxExtentFlat, vmfs).
///
/// Every operation takes virtual-disk offsets and is split at extent boundaries, so callers
/// (the filter's write path, the agent's reads, restore's writes) never see extents.
/// Positional I/O is safe from many threads at once, like `BlockFile`'s. The layout is fixed
/// at open: a descriptor edited afterwards is not noticed until the image is opened again.
public final class DiskImage: Sendable {
    /// What was opened: the raw file or the descriptor.
    public let path: String
    public let format: DiskFormat
    /// The virtual disk size in bytes.
    public let size: UInt64
    /// The extents in disk order; they tile `[0, size)` without gaps.
    public let extents: [DiskExtent]
    public let isWritable: Bool

    /// One open file per distinct extent path (two extents may share a file).
    private let files: [BlockFile]
    /// For each extent, its index in `files`.
    private let fileIndexOfExtent: [Int]

    init(path: String, format: DiskFormat, extents: [DiskExtent], files: [BlockFile], fileIndexOfExtent: [Int], writable: Bool) {
        self.path = path
        self.format = format
        self.extents = extents
        self.files = files
        self.fileIndexOfExtent = fileIndexOfExtent
        self.size = extents.last.map { $0.range.end } ?? 0
        self.isWritable = writable
    }

    // MARK: - Opening

    /// Opens a disk image, detecting the format by content (never by name): a VMDK text
    /// descriptor (see `VMDKDescriptor.looksLikeDescriptor`) opens its flat extents; a sparse
    /// VMDK or qcow2 is refused; anything else is a raw disk whose size is the file size.
    /// - Throws: `BlockIOError` naming the file and the problem (see docs/DISKS.md for each message).
    public static func open(path: String, writable: Bool) throws -> DiskImage {
        let probe = try BlockFile(path: path, mode: .readOnly)
        let fileSize = try probe.size()
        let head = try probe.read(count: Int(min(fileSize, 4096)), at: 0)
        for magic in VMDKDescriptor.sparseMagics where head.starts(with: magic.bytes) {
            throw BlockIOError(.invalidArgument, "\(path): a sparse VMDK extent (magic \(magic.name)); Tessera reads only flat disks: convert it with `qemu-img convert -O vmdk -o subformat=monolithicFlat \(path) OUT.vmdk` and back up OUT.vmdk")
        }
        if head.starts(with: [0x51, 0x46, 0x49, 0xfb]) {
            throw BlockIOError(.invalidArgument, "\(path): a qcow2 image; Tessera reads raw files and flat VMDKs: convert it with `qemu-img convert -O raw \(path) OUT.raw` and back up OUT.raw")
        }
        guard VMDKDescriptor.looksLikeDescriptor(head) else {
            return try openRaw(path: path, writable: writable)
        }
        guard fileSize <= UInt64(VMDKDescriptor.sizeLimit) else {
            throw BlockIOError(.corrupt, "\(path): starts like a VMDK descriptor but is \(fileSize) bytes, more than the \(VMDKDescriptor.sizeLimit)-byte limit for a descriptor; it is damaged")
        }
        let text = try probe.read(count: Int(fileSize), at: 0)
        let descriptor = try VMDKDescriptor.parse(text, source: path)
        return try open(descriptor: descriptor, at: path, identity: try probe.identity(), writable: writable)
    }

    /// Opens a file as a raw disk without looking at its content (for a raw disk whose first
    /// bytes happen to look like another format). The disk size is the file size.
    public static func openRaw(path: String, writable: Bool) throws -> DiskImage {
        let file = try BlockFile(path: path, mode: writable ? .readWrite : .readOnly)
        let size = try file.size()
        let extent = DiskExtent(path: path, range: ByteRange(offset: 0, length: size), fileOffset: 0, access: .readWrite)
        return DiskImage(path: path, format: .raw, extents: [extent], files: [file], fileIndexOfExtent: [0], writable: writable)
    }

    private static func open(descriptor: VMDKDescriptor, at path: String, identity descriptorIdentity: FileIdentity,
                             writable: Bool) throws -> DiskImage {
        let directory = DurableFile.parentDirectory(of: path)
        var files: [BlockFile] = []
        var identities: [FileIdentity] = []
        var fileIndexByPath: [String: Int] = [:]
        var extents: [DiskExtent] = []
        var fileIndexOfExtent: [Int] = []
        var diskOffset: UInt64 = 0
        for (i, e) in descriptor.extents.enumerated() {
            let number = i + 1
            let extentPath = e.fileName.hasPrefix("/") ? e.fileName : "\(directory)/\(e.fileName)"
            switch e.access {
            case .noAccess:
                throw BlockIOError(.invalidArgument, "\(path): extent \(number) (\(e.fileName)) is marked NOACCESS, so the disk cannot be read; fix the descriptor's access word")
            case .readOnly where writable:
                throw BlockIOError(.permissionDenied, "\(path): extent \(number) (\(e.fileName)) is marked RDONLY; open the disk read-only, or change the access word to RW")
            default: break
            }
            let index: Int
            if let known = fileIndexByPath[extentPath] {
                index = known
            } else {
                let file: BlockFile
                do {
                    file = try BlockFile(path: extentPath, mode: writable ? .readWrite : .readOnly)
                } catch let error as BlockIOError where error.code == .notFound {
                    throw BlockIOError(.notFound, "\(path): extent \(number) file \(extentPath) does not exist; put the extent file back next to the descriptor or fix the descriptor's extent line", errno: error.errno)
                }
                let identity = try file.identity()
                if identity.device == descriptorIdentity.device && identity.inode == descriptorIdentity.inode {
                    throw BlockIOError(.corrupt, "\(path): extent \(number) names the descriptor itself (\(e.fileName)); the descriptor is damaged")
                }
                index = files.count
                files.append(file)
                identities.append(identity)
                fileIndexByPath[extentPath] = index
            }
            let needed = e.fileOffset + e.byteCount  // cannot overflow: parse keeps both under Int64.max together
            let actual = identities[index].size
            guard actual >= needed else {
                throw BlockIOError(.corrupt, "\(path): extent \(number) \(extentPath) is \(actual) bytes, descriptor says \(needed) (offset \(e.fileOffset) + \(e.sectors) sectors); the image is truncated: restore the extent file from a copy")
            }
            extents.append(DiskExtent(path: extentPath, range: ByteRange(offset: diskOffset, length: e.byteCount),
                                      fileOffset: e.fileOffset, access: e.access))
            fileIndexOfExtent.append(index)
            diskOffset += e.byteCount
        }
        try refuseAliasing(extents, fileIndexOfExtent, identities, descriptor: path)
        return DiskImage(path: path, format: .vmdk(subformat: descriptor.subformat), extents: extents, files: files,
                         fileIndexOfExtent: fileIndexOfExtent, writable: writable)
    }

    /// Two extents over the same bytes of one file (by inode, so links and `..` paths count)
    /// would make a write to one part of the disk change another: refuse such a descriptor.
    private static func refuseAliasing(_ extents: [DiskExtent], _ fileIndexOfExtent: [Int], _ identities: [FileIdentity],
                                       descriptor: String) throws {
        var seen: [(file: FileIdentity, range: ByteRange, number: Int)] = []
        for (i, e) in extents.enumerated() {
            let id = identities[fileIndexOfExtent[i]]
            let fileRange = ByteRange(offset: e.fileOffset, length: e.range.length)
            if let other = seen.first(where: { $0.file.device == id.device && $0.file.inode == id.inode && $0.range.overlaps(fileRange) }) {
                throw BlockIOError(.corrupt, "\(descriptor): extents \(other.number) and \(i + 1) overlap in the same file \(e.path); the descriptor is damaged")
            }
            seen.append((id, fileRange, i + 1))
        }
    }

    // MARK: - I/O

    /// Reads exactly `buffer.count` bytes at virtual offset `offset`, across extents.
    /// - Throws: `.invalidArgument` when the range runs past the end of the disk.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        let range = try checked(offset, buffer.count, "read")
        try forEachPiece(of: range) { file, fileOffset, piece in
            let start = Int(piece.offset - offset)
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + Int(piece.length)]), at: fileOffset)
        }
    }

    /// Writes all of `bytes` at virtual offset `offset`, across extents.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try requireWritable("write")
        let range = try checked(offset, bytes.count, "write")
        try forEachPiece(of: range) { file, fileOffset, piece in
            let start = Int(piece.offset - offset)
            try file.write(UnsafeRawBufferPointer(rebasing: bytes[start..<start + Int(piece.length)]), at: fileOffset)
        }
    }

    public func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        guard count >= 0 else {
            throw BlockIOError(.invalidArgument, "\(path): cannot read \(count) bytes: a count cannot be negative")
        }
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        return out
    }

    public func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    /// Deallocates a range so it reads as zeroes (trim), in every extent it touches.
    public func punchHole(_ range: ByteRange) throws {
        try requireWritable("punch a hole")
        try checked(range, "punch a hole")
        try forEachPiece(of: range) { file, fileOffset, piece in
            try file.punchHole(ByteRange(offset: fileOffset, length: piece.length))
        }
    }

    /// Writes zero bytes over a range (allocating it), in every extent it touches.
    public func writeZeroes(_ range: ByteRange) throws {
        try requireWritable("write zeroes")
        try checked(range, "write zeroes")
        try forEachPiece(of: range) { file, fileOffset, piece in
            try file.writeZeroes(ByteRange(offset: fileOffset, length: piece.length))
        }
    }

    /// The allocated (data) parts of `range`, in virtual-disk offsets, sorted and merged across
    /// extent boundaries. Holes come from SEEK_DATA / SEEK_HOLE in each extent file; a file
    /// system without them reports everything as data, which is safe.
    public func dataRanges(in range: ByteRange) throws -> [ByteRange] {
        try checked(range, "map data")
        var out: [ByteRange] = []
        try forEachPiece(of: range) { file, fileOffset, piece in
            for data in try file.dataRanges(in: ByteRange(offset: fileOffset, length: piece.length)) {
                out.append(ByteRange(offset: piece.offset + (data.offset - fileOffset), length: data.length))
            }
        }
        return out.coalesced()
    }

    /// Fills `buffer` from virtual offset `offset` only if every byte is in the page cache
    /// (see `BlockFile.readIfCached`). False for anything else, including a range outside
    /// the disk; `buffer` may be partly overwritten then.
    public func readIfCached(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Bool {
        guard offset <= size, UInt64(buffer.count) <= size - offset else { return false }
        var cached = true
        try? forEachPiece(of: ByteRange(offset: offset, length: UInt64(buffer.count))) { file, fileOffset, piece in
            guard cached else { return }
            let start = Int(piece.offset - offset)
            cached = file.readIfCached(into: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + Int(piece.length)]), at: fileOffset)
        }
        return cached
    }

    /// Starts reading a range into the page cache (see `BlockFile.prefetch`). Advisory.
    public func prefetch(_ range: ByteRange) {
        guard let r = ByteRange(offset: 0, length: size).intersection(range) else { return }
        try? forEachPiece(of: r) { file, fileOffset, piece in file.prefetch(ByteRange(offset: fileOffset, length: piece.length)) }
    }

    /// Starts writeback of a range (see `BlockFile.startWriteback`). Advisory.
    public func startWriteback(_ range: ByteRange) {
        guard let r = ByteRange(offset: 0, length: size).intersection(range) else { return }
        try? forEachPiece(of: r) { file, fileOffset, piece in file.startWriteback(ByteRange(offset: fileOffset, length: piece.length)) }
    }

    /// Makes every extent file durable (fsync), each once.
    public func sync() throws {
        for file in files { try file.sync() }
    }

    /// One identity per extent file (distinct files, in disk order): if any changed while the
    /// tracker was not watching, the disk's change history cannot be trusted.
    public func identity() throws -> [FileIdentity] {
        try files.map { try $0.identity() }
    }

    // MARK: - Helpers

    /// Calls `body` for each part of `range` inside one extent, in disk order, with the
    /// extent's file and the part's offset in that file. `range` must be inside the disk.
    private func forEachPiece(of range: ByteRange,
                              _ body: (_ file: BlockFile, _ fileOffset: UInt64, _ piece: ByteRange) throws -> Void) throws {
        guard !range.isEmpty else { return }
        // Binary search: the first extent whose end is past range.offset.
        var lo = 0, hi = extents.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if extents[mid].range.end <= range.offset { lo = mid + 1 } else { hi = mid }
        }
        var i = lo
        while i < extents.count, extents[i].range.offset < range.end {
            let extent = extents[i]
            if let piece = extent.range.intersection(range) {
                try body(files[fileIndexOfExtent[i]], extent.fileOffset + (piece.offset - extent.range.offset), piece)
            }
            i += 1
        }
    }

    @discardableResult
    private func checked(_ offset: UInt64, _ count: Int, _ what: String) throws -> ByteRange {
        let range = ByteRange(offset: offset, length: UInt64(count))
        try checked(range, what)
        return range
    }

    private func checked(_ range: ByteRange, _ what: String) throws {
        let (end, overflow) = range.offset.addingReportingOverflow(range.length)
        guard !overflow, end <= size else {
            throw BlockIOError(.invalidArgument, "\(path): cannot \(what) \(range.length) bytes at offset \(range.offset): the disk is \(size) bytes")
        }
    }

    private func requireWritable(_ what: String) throws {
        guard isWritable else {
            throw BlockIOError(.permissionDenied, "\(path): cannot \(what): the disk image was opened read-only; open it writable")
        }
    }
}
