import BlockIO
import Foundation
import Logging
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Shared locks for backups (many at once), exclusive locks for pruning (alone).
public enum LockKind: String, Codable, Sendable {
    case shared, exclusive
}

/// What a lock file (`locks/<id>.lock`, JSON) records.
public struct LockInfo: Codable, Sendable, Equatable {
    public var id: String
    public var kind: LockKind
    public var host: String
    public var pid: Int32
    public var started: Date
    public var refreshed: Date

    /// A lock not refreshed for this long is stale, whoever holds it.
    public static let staleAfter: TimeInterval = 30 * 60

    /// Stale: left by a dead process on this host, or not refreshed for `staleAfter`.
    public func isStale(now: Date = Date()) -> Bool {
        if now.timeIntervalSince(refreshed) > Self.staleAfter { return true }
        if host == currentHostName() {
            return kill(pid, 0) != 0 && errno == ESRCH
        }
        return false
    }

    public var summary: String {
        "\(kind.rawValue) lock \(id.prefix(12)) held by pid \(pid) on \(host) since \(started.formatted(Date.ISO8601FormatStyle()))"
    }
}

func currentHostName() -> String {
    var buf = [CChar](repeating: 0, count: 256)
    guard gethostname(&buf, buf.count - 1) == 0 else { return "unknown" }
    let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// A lock this process holds. Release it when done; refresh it at least every 30 minutes
/// while a long operation runs, or others may treat it as stale.
public final class RepositoryLock: Sendable {
    public let info: LockInfo
    private let store: any ObjectStore

    init(info: LockInfo, store: any ObjectStore) {
        self.info = info
        self.store = store
    }

    /// Rewrites the lock file with the current time.
    public func refresh() throws {
        var i = info
        i.refreshed = Date()
        try store.put(ObjectKey(.lock, info.id), JSONEnvelope.encoder().encode(i).map { $0 }, syncNow: true)
    }

    /// Removes the lock file.
    public func release() throws {
        try store.delete(ObjectKey(.lock, info.id))
        try store.syncPendingDirectories()
    }
}

/// How a command that only reads (restore, serve, diff, check) locks the repository.
public enum ReadLocking: Sendable, Equatable {
    /// A shared lock, so a prune waits. When no lock file can be written because the
    /// repository is read-only here (a write-protected disk, a read-only mount or snapshot,
    /// no write permission), the command goes on without one, says so, and still refuses to
    /// run beside an exclusive lock it can see.
    case shared
    /// No lock, and other processes' locks are ignored (`--no-lock`, restic's meaning): for a
    /// repository that cannot be written, or to read beside a prune at the operator's risk.
    /// Nothing is written into the repository.
    case none
}

extension RepositoryError {
    /// The storage refused a write because it is read-only, or not writable by this user
    /// (EROFS, EACCES, EPERM).
    public var isReadOnlyStorage: Bool {
        guard let e = cause as? BlockIOError, let errno = e.errno else { return false }
        return errno == .readOnlyFileSystem || errno == .permissionDenied || errno == .notPermitted
    }
}

extension Repository {
    /// Takes a lock, retrying for up to `wait` seconds while another process holds a
    /// conflicting one (a backup's shared lock, for prune).
    /// - Throws: `.locked` when the wait runs out.
    public func lock(_ kind: LockKind, wait: TimeInterval) throws -> RepositoryLock {
        let deadline = Date().addingTimeInterval(wait)
        while true {
            do { return try lock(kind) } catch let e as RepositoryError where e.code == .locked && Date() < deadline {
                // Jitter, so two waiters do not keep backing off in step.
                Thread.sleep(forTimeInterval: Double.random(in: 0.5...1.5))
            }
        }
    }

    /// The lock of a command that only reads (see `ReadLocking`).
    /// - Parameter logger: told, at `.warning`, when the command runs without a lock it was
    ///   meant to take.
    /// - Returns: the lock, or nil when the command runs without one.
    /// - Throws: `.locked` when another process holds the exclusive lock (a prune).
    public func lockForReading(_ locking: ReadLocking, logger: Logger) throws -> RepositoryLock? {
        guard locking == .shared else { return nil }
        do {
            return try lock(.shared)
        } catch let e as RepositoryError where e.isReadOnlyStorage {
            // No lock of our own, but a prune that locked the repository through a writable
            // path (the same disk mounted elsewhere) is still honoured.
            let now = Date()
            if let conflict = try locks().first(where: { $0.kind == .exclusive && !$0.isStale(now: now) }) {
                throw RepositoryError(.locked, "the repository is locked: \(conflict.summary); wait for it to finish (or, at your own risk, use --no-lock)",
                                      object: "lock \(conflict.id)")
            }
            let why = (e.cause as? BlockIOError)?.errno.map { "\($0)" } ?? e.message
            logger.warning("warning: the repository is read-only here (cannot write a lock file: \(why)), so this runs without a lock; a prune running elsewhere could delete what it reads. --no-lock skips the lock on purpose, without this warning")
            return nil
        }
    }
}
