import Foundation
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
