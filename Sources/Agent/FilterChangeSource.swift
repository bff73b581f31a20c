import BackupRepository
import BlockIO
import Logging
import TrackerControl

/// Tessera's filter: a checkpoint freezes the disk's flat file (new writes go to an overlay)
/// and the tracker answers exactly what changed since the change ID the base snapshot was
/// taken at, or says a full read is required. `commit` releases the checkpoint with commit;
/// `abort` with abort, which keeps every change for the next backup.
public struct FilterChangeSource: ChangeSource {
    /// The filter's control socket.
    public let control: String
    public let disk: String
    /// The flat file or descriptor to read instead of the one the filter reports (the same
    /// disk seen through another path).
    public let sourcePath: String?
    /// A checkpoint the caller took already (the nightly run checkpoints a VM's disks as one
    /// group): the session uses it instead of taking its own, and releases it the same way.
    public let adopted: ControlProtocol.CheckpointReply?

    public init(control: String, disk: String, sourcePath: String? = nil, adopting checkpoint: ControlProtocol.CheckpointReply? = nil) {
        self.control = control
        self.disk = disk
        self.sourcePath = sourcePath
        self.adopted = checkpoint
    }

    public func begin(base: BackupBase?, chunkSize: Int, fullRead: Bool, logger: Logger) throws -> any ChangeSession {
        let client: ControlClient
        let checkpoint: ControlProtocol.CheckpointReply
        do {
            client = try ControlClient(path: control)
            checkpoint = try adopted ?? takeCheckpoint(client, logger: logger)
        } catch let e as FilterError {
            throw AgentError(.filter, e.message, cause: e)
        }
        let session = FilterSession(control: control, disk: disk, checkpoint: checkpoint)
        do {
            let reader = try ImageSource(path: sourcePath ?? checkpoint.path)
            guard reader.size == checkpoint.size else {
                throw AgentError(.source, "\(reader.description) is \(reader.size) bytes but the filter serves disk \(disk) as \(checkpoint.size) bytes; is it the same disk?")
            }
            let changes = try changes(since: base, chunkSize: chunkSize, fullRead: fullRead, size: reader.size, client: client)
            return FilterSession(control: control, disk: disk, checkpoint: checkpoint, reader: reader, changes: changes)
        } catch {
            session.abort()
            if let e = error as? FilterError { throw AgentError(.filter, e.message, cause: e) }
            throw error
        }
    }

    /// What changed since `base`, as the tracker says now: only the changed ranges, or
    /// everything with the reason an incremental is not possible.
    private func changes(since base: BackupBase?, chunkSize: Int, fullRead: Bool, size: UInt64,
                         client: ControlClient) throws -> ChangeSet {
        var reason = fullRead ? "a full read was asked for" : nil
        if reason == nil {
            reason = base.flatMap { base in
                base.mismatch(size: size, chunkSize: chunkSize) ?? (base.snapshot.changeID.flatMap(ChangeID.init) == nil
                    ? "snapshot \(base.snapshot.id) was not taken through the filter (it holds no change ID)" : nil)
            } ?? (base == nil ? "no earlier snapshot of disk \(disk) in the repository" : nil)
        }
        if reason == nil, let since = base?.snapshot.changeID {
            do {
                let extents = try client.allChanges(disk: disk, since: since)
                return .since(data: extents.filter { !$0.zero }.map { ByteRange(offset: $0.offset, length: $0.length) },
                              zeroed: extents.filter(\.zero).map { ByteRange(offset: $0.offset, length: $0.length) })
            } catch let e as FilterError where e.code == .fullReadRequired {
                reason = "the filter cannot answer what changed since \(since): \(e.message)"
            }
        }
        return .everything(reason: reason)
    }

    /// Takes a checkpoint. One left open by a holder that is gone (a backup that died, a
    /// lease that ran out with no reader connected) is released with abort (nothing is lost)
    /// first; one that may be in use is left alone, and the error says who holds it.
    private func takeCheckpoint(_ client: ControlClient, logger: Logger) throws -> ControlProtocol.CheckpointReply {
        do {
            return try client.checkpoint(disk: disk)
        } catch let e as FilterError where e.code == .checkpointOpen {
            try Self.releaseIfStale(client, disks: [disk], control: control, logger: logger)
            return try client.checkpoint(disk: disk)
        }
    }

    /// Releases with abort (nothing is lost) every checkpoint of `disks` that was left open by
    /// a holder that is gone (a backup that died, a lease that ran out with no reader).
    /// - Throws: `AgentError(.filter)` saying who holds a checkpoint that may be in use.
    public static func releaseIfStale(_ client: ControlClient, disks: [String], control: String, logger: Logger) throws {
        for disk in disks {
            guard let open = try client.status(disk: disk).first?.checkpoint else { continue }
            guard let stale = open.stale else {
                throw AgentError(.filter, heldMessage(open, disk: disk, control: control))
            }
            logger.notice("released checkpoint \(open.changeID) of disk \(disk) with abort (nothing is lost): \(stale)")
            _ = try client.release(disk: disk, commit: false)
        }
    }

    /// Who holds a checkpoint that is in use, and what to do.
    static func heldMessage(_ open: CheckpointStatus, disk: String, control: String) -> String {
        let release = "tessera filter release --control \(control) --disk \(disk) --abort"
        if let readers = open.readers, readers > 0 {
            return "disk \(disk) has checkpoint \(open.changeID) open and \(readers) reader\(readers == 1 ? " is" : "s are") still copying \(disk)@checkpoint; wait for the copy to finish (its tool then releases the checkpoint), or stop it and run `\(release)`"
        }
        guard let owner = open.owner else {
            return "disk \(disk) has checkpoint \(open.changeID) open, taken by an unknown holder; if nothing is reading it, run `\(release)` (nothing is lost)"
        }
        if let pid = owner.pid {
            return "process \(pid) on \(owner.host) holds checkpoint \(open.changeID) of disk \(disk) (a backup that is running, or a script that took it with --owner-pid); wait for it to finish"
        }
        return "disk \(disk) has checkpoint \(open.changeID) open, held by \(owner.holderDescription); when its reader is done, release it (`\(release)`), or wait for the lease to run out"
    }
}

/// One backup's checkpoint on the filter. Commit and abort open their own connection: the
/// one the checkpoint was taken on may have been idle for hours.
struct FilterSession: ChangeSession {
    let control: String
    let disk: String
    let checkpoint: ControlProtocol.CheckpointReply
    var reader: any DiskSource = EmptySource()
    var changes: ChangeSet = .everything(reason: nil)

    var kind: ChangeSourceKind { if case .since = changes { .cbt } else { .full } }
    var changeID: String? { checkpoint.changeID }
    var group: String? { checkpoint.group }

    func commit() throws {
        do {
            _ = try ControlClient(path: control).release(disk: disk, commit: true)
        } catch {
            throw AgentError(.filter, "releasing checkpoint \(checkpoint.changeID) of disk \(disk) failed: \(error); run `tessera filter release --control \(control) --disk \(disk)`",
                             cause: error as? FilterError)
        }
    }

    func abort() {
        _ = try? ControlClient(path: control).release(disk: disk, commit: false)
    }

    func overlayBytes() -> UInt64? {
        (try? ControlClient(path: control).status(disk: disk).first)?.flatMap { $0.overlayBytes }
    }
}

/// A reader for a session that never got as far as opening its disk.
struct EmptySource: DiskSource {
    var size: UInt64 { 0 }
    var description: String { "nothing" }
    var allowsConcurrentReads: Bool { true }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {}
    func dataRanges(in range: ByteRange) throws -> [ByteRange] { [] }
}

extension FilterChangeSource: ConvergingSource {
    public var canConverge: Bool { adopted == nil }

    public func liveReader() throws -> any DiskSource {
        try filterErrors {
            guard let status = try ControlClient(path: control).status(disk: disk).first else {
                throw AgentError(.filter, "the filter at \(control) serves no disk \(disk)")
            }
            return try ImageSource(path: sourcePath ?? status.path)
        }
    }

    public func mark(logger: Logger) throws -> String {
        try filterErrors {
            let client = try ControlClient(path: control)
            let checkpoint = try takeCheckpoint(client, logger: logger)
            _ = try client.release(disk: disk, commit: false)
            return checkpoint.changeID
        }
    }

    public func changes(since base: BackupBase?, chunkSize: Int, fullRead: Bool, size: UInt64) throws -> ChangeSet {
        try filterErrors {
            try changes(since: base, chunkSize: chunkSize, fullRead: fullRead, size: size, client: ControlClient(path: control))
        }
    }

    /// The filter's errors as the agent's (the CLI maps those to its messages and exit codes).
    private func filterErrors<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as FilterError { throw AgentError(.filter, e.message, cause: e) }
    }
}
