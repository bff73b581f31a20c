import BlockIO
import ChangeTracking
import NBD
import Synchronization
import TrackerControl

/// The NBD exports of the filter, as libvirt's pull-mode backup shows them:
/// - `NAME`: the live disk, writable, with `base:allocation` and `qemu:dirty-bitmap:active`
///   (blocks changed since the last checkpoint);
/// - `NAME@checkpoint`, while a checkpoint is open: the disk as it was at the checkpoint,
///   read-only, with `base:allocation` and `qemu:dirty-bitmap:checkpoint` (blocks changed
///   between the previous checkpoint and this one); `NAME@SEQUENCE` (the checkpoint's change
///   ID sequence, e.g. `vm1@7`) names one checkpoint and is refused once another is open.
public struct FilterExportProvider: NBDExportProvider {
    public static let checkpointSuffix = "@checkpoint"
    let service: FilterService

    public init(service: FilterService) { self.service = service }

    public func exportNames() -> [String] {
        service.diskNames.flatMap { name -> [String] in
            guard let d = try? service.disk(named: name) else { return [] }
            return d.hasCheckpoint ? [name, name + Self.checkpointSuffix] : [name]
        }
    }

    public func export(named name: String) -> (any NBDExport)? {
        // "" is the default export when exactly one disk is attached.
        if name.isEmpty {
            let names = service.diskNames
            guard names.count == 1, let d = try? service.disk(named: names[0]) else { return nil }
            return LiveExport(disk: d)
        }
        if let at = name.lastIndex(of: "@") {
            // NAME@checkpoint: the checkpoint open now. NAME@SEQUENCE: only that checkpoint,
            // so a reader that connects late never gets a newer one by mistake.
            let which = name[name.index(after: at)...]
            guard let d = try? service.disk(named: String(name[..<at])), let id = d.readableCheckpointID,
                  "@" + which == Self.checkpointSuffix || ChangeID(id).map({ String($0.sequence) }) == String(which) else {
                return nil
            }
            return CheckpointExport(disk: d, checkpointID: id)
        }
        guard let d = try? service.disk(named: name) else { return nil }
        return LiveExport(disk: d)
    }
}

/// Turns (range, flags) pieces covering a request into NBD extents (lengths fit in 32 bits
/// because a request's length does).
func blockStatusExtents(_ pieces: [(ByteRange, UInt32)]) -> [NBDBlockStatusExtent] {
    var out: [NBDBlockStatusExtent] = []
    for (r, f) in pieces where r.length > 0 {
        if let last = out.last, last.flags == f, UInt64(last.length) + r.length <= UInt64(UInt32.max) {
            out[out.count - 1].length += UInt32(r.length)
        } else {
            out.append(NBDBlockStatusExtent(length: UInt32(r.length), flags: f))
        }
    }
    return out
}

/// Dirty extents as NBD pieces: 1 = dirty, 0 = clean, covering the whole request.
func dirtyPieces(_ extents: [ChangedExtent], request: ByteRange) -> [(ByteRange, UInt32)] {
    var pieces: [(ByteRange, UInt32)] = []
    var at = request.offset
    for e in extents {
        guard let r = e.range.intersection(request) else { continue }
        if r.offset > at { pieces.append((ByteRange(offset: at, length: r.offset - at), 0)) }
        pieces.append((r, 1))
        at = r.end
    }
    if at < request.end { pieces.append((ByteRange(offset: at, length: request.end - at), 0)) }
    return pieces
}

struct LiveExport: NBDExport {
    let disk: FilteredDisk

    var info: NBDExportInfo {
        NBDExportInfo(name: disk.name, description: "Tessera filter: live disk \(disk.name)", size: disk.size,
                      readOnly: false, canTrim: true, canWriteZeroes: true, canFlush: true, canFUA: true,
                      // A FLUSH syncs the files, which covers every connection's writes.
                      canMultiConn: true,
                      metaContexts: ["base:allocation", "qemu:dirty-bitmap:active"])
    }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try disk.read(offset: offset, into: buffer)
    }

    func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        disk.readIfCached(offset: offset, into: buffer)
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {
        try disk.write(offset: offset, bytes: data, fua: fua)
    }

    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        try disk.zero(ByteRange(offset: offset, length: UInt64(length)), noHole: false, fua: fua)
    }

    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {
        try disk.zero(ByteRange(offset: offset, length: UInt64(length)), noHole: noHole, fua: fua)
    }

    func flush() throws {
        try disk.flush()
    }

    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        let request = ByteRange(offset: offset, length: UInt64(length))
        switch context {
        case "base:allocation":
            return blockStatusExtents(try disk.allocation(in: request, checkpointView: false))
        case "qemu:dirty-bitmap:active":
            return blockStatusExtents(dirtyPieces(try disk.changedExtents(view: .active, in: request), request: request))
        default:
            throw NBDError(.invalid, "export \(disk.name) has no meta context \(context)")
        }
    }

    func nbdError(for error: any Error) -> NBDError { WireErrors.nbd(error) }
}

/// `NAME@checkpoint` as one connection sees it: bound to the checkpoint that was open when
/// the connection chose the export. Once that checkpoint is released every read fails
/// (EIO), so one copy never mixes two points in time, even if a new checkpoint opens.
final class CheckpointExport: NBDExport {
    let disk: FilteredDisk
    let checkpointID: String

    /// Counted as a reader for as long as the connection holds it (a checkpoint with readers
    /// is never treated as stale).
    init(disk: FilteredDisk, checkpointID: String) {
        self.disk = disk
        self.checkpointID = checkpointID
        disk.checkpointReaders.add(1, ordering: .relaxed)
    }

    deinit { disk.checkpointReaders.subtract(1, ordering: .relaxed) }

    var info: NBDExportInfo {
        NBDExportInfo(name: disk.name + FilterExportProvider.checkpointSuffix,
                      description: "Tessera filter: disk \(disk.name) at checkpoint \(checkpointID) (read-only)",
                      size: disk.size, readOnly: true, canTrim: false, canWriteZeroes: false, canFlush: false,
                      canFUA: false, canMultiConn: true,
                      metaContexts: ["base:allocation", "qemu:dirty-bitmap:checkpoint"])
    }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try disk.readCheckpoint(checkpointID, offset: offset, into: buffer)
    }

    func readIfCached(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        disk.readCheckpointIfCached(checkpointID, offset: offset, into: buffer)
    }

    func write(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool) throws {
        throw NBDError(.permission, "the checkpoint export of \(disk.name) is read-only")
    }

    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        throw NBDError(.permission, "the checkpoint export of \(disk.name) is read-only")
    }

    func writeZeroes(offset: UInt64, length: UInt32, noHole: Bool, fua: Bool) throws {
        throw NBDError(.permission, "the checkpoint export of \(disk.name) is read-only")
    }

    func flush() throws {}

    func blockStatus(context: String, offset: UInt64, length: UInt32) throws -> [NBDBlockStatusExtent] {
        let request = ByteRange(offset: offset, length: UInt64(length))
        // Under the disk's I/O lock, so a release cannot start between the check and the answer.
        return try disk.io.withShared {
            try disk.requireReadable(checkpointID)
            switch context {
            case "base:allocation":
                return blockStatusExtents(try disk.allocation(in: request, checkpointView: true))
            case "qemu:dirty-bitmap:checkpoint":
                return blockStatusExtents(dirtyPieces(try disk.changedExtents(view: .checkpoint, in: request), request: request))
            default:
                throw NBDError(.invalid, "export \(disk.name)@checkpoint has no meta context \(context)")
            }
        }
    }

    func nbdError(for error: any Error) -> NBDError { WireErrors.nbd(error) }
}
