import BlockIO
import NBD

/// Reads of a disk image that only copy from the page cache (`PageCacheRead`), for reads
/// answered on the NBD server's event loop.
///
/// `DiskImage` keeps its file descriptors to itself, so this opens each extent file again,
/// read-only, and keeps it only if it is the very file the image has open (same device and
/// inode). When that does not hold, there is no reader and every read takes the ordinary path.
final class CachedImageReader: Sendable {
    private struct Extent: Sendable {
        var range: ByteRange
        var fileOffset: UInt64
        var file: BlockFile
    }

    private let extents: [Extent]

    init?(image: DiskImage) {
        guard let identities = try? image.identity() else { return nil }
        var byPath: [String: BlockFile] = [:]
        var extents: [Extent] = []
        for e in image.extents {
            let file: BlockFile
            if let known = byPath[e.path] {
                file = known
            } else {
                guard let opened = try? BlockFile(path: e.path, mode: .readOnly), let id = try? opened.identity(),
                      identities.contains(where: { $0.device == id.device && $0.inode == id.inode }) else { return nil }
                byPath[e.path] = opened
                file = opened
            }
            extents.append(Extent(range: e.range, fileOffset: e.fileOffset, file: file))
        }
        self.extents = extents
    }

    /// Fills `buffer` from virtual offset `offset` if every byte is cached; false otherwise
    /// (and for a range past the end). `buffer` may be partly overwritten when false.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Bool {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !overflow else { return false }
        var at = offset
        // Extents are few (one for a raw disk): a linear scan is cheaper than a search.
        for e in extents where e.range.end > at && e.range.offset < end {
            let pieceEnd = min(e.range.end, end)
            let start = Int(at - offset)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + Int(pieceEnd - at)])
            guard PageCacheRead.read(e.file, into: piece,
                                     at: e.fileOffset + (at - e.range.offset)) else { return false }
            at = pieceEnd
            if at == end { return true }
        }
        return at == end
    }
}
