import BlockIO
import ChangeTracking
import Foundation
import Logging
import Synchronization
import TrackerControl

/// The filter: the set of attached disks and the requests of the control endpoint.
///
/// The NBD server (see `FilterExportProvider`) and the control server both call into it.
public final class FilterService: Sendable {
    public let stateDirectory: String
    public let configuration: TrackerConfiguration
    private let disks = Mutex<Disks>(Disks())
    private let logger: Logger
    /// flock on `STATE/filter.lock` (holding our pid) for the service's lifetime: a second
    /// filter on this state directory is refused before it reads or changes anything.
    private let stateLock: FileLock

    private struct Disks {
        var attached: [String: FilteredDisk] = [:]
        /// Names being attached right now: a second ATTACH of one name is refused at once,
        /// before it opens anything in the name's state directory.
        var attaching: Set<String> = []
    }

    public static let lockFileName = "filter.lock"

    /// - Throws: `FilterError.busy` naming the process when another filter uses `stateDirectory`.
    public init(stateDirectory: String, configuration: TrackerConfiguration, logger: Logger) throws {
        self.stateDirectory = stateDirectory
        self.configuration = configuration
        self.logger = logger
        try DurableFile.makeDirectory(stateDirectory)
        do {
            stateLock = try FileLock.acquire("\(stateDirectory)/\(Self.lockFileName)", create: true, writePid: true)
        } catch let held as FileLock.Held {
            throw FilterError(.busy, "the state directory \(stateDirectory) is in use by \(held.pid.map { "process \($0)" } ?? "another process") (a running `tessera filter serve`); stop it first, or give this filter its own --state-dir", cause: held)
        }
    }

    /// Disk names become directory and export names: keep them plain.
    public static func validateDiskName(_ name: String) throws {
        if let problem = DiskName.problem(name) {
            throw FilterError(.invalidArgument, "disk name '\(name)' is not allowed: \(problem)")
        }
        guard name != lockFileName else {
            throw FilterError(.invalidArgument, "disk name '\(name)' is not allowed: it is the name of the filter's lock file")
        }
    }

    public func disk(named name: String) throws -> FilteredDisk {
        guard let d = disks.withLock({ $0.attached[name] }) else {
            let known = diskNames.joined(separator: ", ")
            throw FilterError(.unknownDisk, "no disk named '\(name)' is attached (attached: \(known.isEmpty ? "none" : known))")
        }
        return d
    }

    public var diskNames: [String] { disks.withLock { $0.attached.keys.sorted() } }

    /// Attaches a disk. `path` must be absolute (the filter's working directory is not the
    /// caller's). One file is attached once: under a second name (or spelling, or symlink)
    /// its writes would not be tracked for the first.
    @discardableResult
    public func attach(name: String, path: String) throws -> FilteredDisk {
        try FilterService.validateDiskName(name)
        guard path.hasPrefix("/") else {
            throw FilterError(.invalidArgument, "the path of disk '\(name)' must be absolute, not '\(path)': the filter resolves paths in its own working directory")
        }
        try disks.withLock { d throws(FilterError) in
            if d.attached[name] != nil || d.attaching.contains(name) {
                throw FilterError(.diskExists, "a disk named '\(name)' is already attached")
            }
            d.attaching.insert(name)
        }
        defer { disks.withLock { _ = $0.attaching.remove(name) } }
        let disk: FilteredDisk
        do {
            disk = try FilteredDisk.attach(name: name, path: path, stateDirectory: "\(stateDirectory)/\(name)",
                                           configuration: configuration)
        } catch let held as FilteredDisk.DiskFileHeld where held.pid == getpid() {
            let other = disks.withLock { $0.attached.values.first { $0.holdsFile(held.path) }?.name }
            throw FilterError(.diskExists, "\(held.path) is already attached as disk '\(other ?? "?")'; one file can be attached once (writes through one name would not be tracked for the other)", cause: held)
        } catch let held as FilteredDisk.DiskFileHeld {
            throw FilterError(.busy, held.description, cause: held)
        }
        disks.withLock { $0.attached[name] = disk }
        for note in disk.attachNotes { logger.notice("disk \(name): \(note)") }
        logger.info("attached disk \(name) (\(disk.size) bytes) from \(path)")
        return disk
    }

    /// Stops tracking a disk. Its tracking state is closed cleanly and kept, so attaching the
    /// same file again continues the same generation unless the file changed meanwhile.
    public func detach(name: String) throws {
        let disk = try self.disk(named: name)
        if disk.hasCheckpoint {
            throw FilterError(.checkpointOpen, "disk \(name) has an open checkpoint; release it before detaching")
        }
        try disk.close()
        disks.withLock { _ = $0.attached.removeValue(forKey: name) }
        logger.info("detached disk \(name)")
    }

    /// Persists every disk's tracking state (the periodic write).
    public func persistAll() {
        for disk in disks.withLock({ Array($0.attached.values) }) {
            do { try disk.persist() } catch { logger.error("disk \(disk.name): persisting tracking state failed: \(error)") }
        }
    }

    /// Clean shutdown of every disk.
    public func closeAll() {
        for disk in disks.withLock({ Array($0.attached.values) }) {
            do { try disk.close() } catch { logger.error("disk \(disk.name): clean close failed: \(error)") }
        }
        disks.withLock { $0.attached.removeAll() }
    }

    // MARK: - Control requests

    static func reply(_ d: FilteredDisk, _ info: CheckpointInfo, group: String?) -> ControlProtocol.CheckpointReply {
        ControlProtocol.CheckpointReply(disk: d.name, changeID: info.changeID.description, previous: info.previous?.description,
                                        createdAt: Double(info.createdAt), path: d.path, files: d.image.extents.map(\.path),
                                        size: d.size, granularity: d.granularity, group: group)
    }

    /// Handles one control request: decodes its payload, acts, encodes the reply.
    ///
    /// - Throws: whatever went wrong, as it was thrown (a `TrackerError`, a `BlockIOError`...):
    ///   the control server turns it into a status and a message (`WireErrors.control`).
    public func handle(_ request: ControlProtocol.Request, _ payload: [UInt8]) throws -> [UInt8] {
        typealias P = ControlProtocol
        switch request {
        case .attach:
            let r = try P.decode(P.AttachRequest.self, payload, request: request)
            return P.encode(try attach(name: r.disk, path: r.path).status())
        case .detach:
            let r = try P.decode(P.DiskRequest.self, payload, request: request)
            try detach(name: r.disk)
            return P.encode(P.Empty())
        case .status:
            let r = try P.decode(P.StatusRequest.self, payload, request: request)
            let list = try r.disk.map { [try disk(named: $0)] } ?? disks.withLock { $0.attached.values.sorted { $0.name < $1.name } }
            return P.encode(P.StatusReply(protocolVersion: Int(P.version), disks: list.map { $0.status() }))
        case .checkpoint:
            let r = try P.decode(P.CheckpointRequest.self, payload, request: request)
            let d = try disk(named: r.disk)
            let info = try d.checkpoint(owner: r.owner)
            logger.info("disk \(d.name): checkpoint \(info.changeID)")
            return P.encode(Self.reply(d, info, group: nil))
        case .checkpointGroup:
            let r = try P.decode(P.CheckpointGroupRequest.self, payload, request: request)
            guard !r.disks.isEmpty, Set(r.disks).count == r.disks.count else {
                throw FilterError(.invalidArgument, "a checkpoint group names each of its disks once, and at least one (got \(r.disks))")
            }
            let members = try r.disks.map { try disk(named: $0) }
            let group = r.group ?? UUID().uuidString
            let infos = try FilteredDisk.checkpoint(members, owner: r.owner, group: group)
            logger.info("checkpoint group \(group): \(zip(members, infos).map { "\($0.name) \($1.changeID)" }.joined(separator: ", "))")
            return P.encode(P.CheckpointGroupReply(group: group, checkpoints: zip(members, infos).map { Self.reply($0, $1, group: group) }))
        case .queryChanges:
            let r = try P.decode(P.QueryChangesRequest.self, payload, request: request)
            let d = try disk(named: r.disk)
            guard let since = ChangeID(r.since) else {
                throw FilterError(.invalidArgument, "'\(r.since)' is not a change ID; a change ID looks like UUID/SEQUENCE (e.g. 3f2504e0-4f89-41d3-9a0c-0305e82c3301/7)")
            }
            let offset = r.offset ?? 0
            guard offset <= d.size else {
                throw FilterError(.invalidArgument, "offset \(offset) is past the end of disk \(d.name) (\(d.size) bytes)")
            }
            let length = min(r.length ?? (d.size - offset), d.size - offset)
            // With a checkpoint open the tracker describes the frozen base, which is what the
            // agent reads: blocks written since are reported changed, never "reads as zero".
            let page = try d.tracker.changes(since: since, in: ByteRange(offset: offset, length: length))
            return P.encode(P.QueryChangesReply(
                disk: d.name, since: r.since,
                extents: page.extents.map { P.Extent(offset: $0.range.offset, length: $0.range.length, zero: $0.readsAsZero) },
                processedOffset: page.processed.offset, processedLength: page.processed.length, size: d.size))
        case .release:
            let r = try P.decode(P.ReleaseRequest.self, payload, request: request)
            let d = try disk(named: r.disk)
            try d.release(commit: r.commit)
            logger.info("disk \(d.name): checkpoint released (\(r.commit ? "commit" : "abort"))")
            return P.encode(d.status())
        case .reset:
            let r = try P.decode(P.ResetRequest.self, payload, request: request)
            let d = try disk(named: r.disk)
            try d.tracker.reset(reason: r.reason ?? "reset requested through the control endpoint")
            logger.notice("disk \(d.name): tracking reset, new generation")
            return P.encode(d.status())
        }
    }
}
