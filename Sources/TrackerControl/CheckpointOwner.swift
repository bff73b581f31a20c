import Foundation

/// Who holds an open checkpoint, so that a checkpoint whose holder is gone can be told
/// apart from one that is still being read.
///
/// Two kinds of holder (docs/CONTROL.md, "Who holds a checkpoint"):
/// - a process (`pid`): the agent's `backup`, or a script passing `--owner-pid`; the
///   checkpoint is in use while that process lives (checked on this host only);
/// - a lease (`leaseExpiresAt`): `tessera filter checkpoint` from a shell, whose own process
///   exits at once; the checkpoint is in use until the lease runs out.
/// Either way, a checkpoint with a reader connected to `NAME@checkpoint` is in use.
public struct CheckpointOwner: Codable, Sendable, Equatable {
    public var host: String
    public var pid: Int32?
    /// Seconds since 1970 after which the checkpoint may be released by someone else.
    public var leaseExpiresAt: Double?

    public init(host: String = ProcessInfo.processInfo.hostName, pid: Int32?, leaseExpiresAt: Double? = nil) {
        self.host = host
        self.pid = pid
        self.leaseExpiresAt = leaseExpiresAt
    }

    /// This process.
    public static var current: CheckpointOwner {
        CheckpointOwner(pid: getpid())
    }

    /// A lease of `seconds` from now, held by no process.
    public static func lease(seconds: Double, now: Date = Date()) -> CheckpointOwner {
        CheckpointOwner(pid: nil, leaseExpiresAt: now.timeIntervalSince1970 + seconds)
    }

    /// Why nobody can be using the checkpoint any more, or nil while someone may be.
    /// - Parameter readers: connections open on the checkpoint's export right now.
    public func staleReason(readers: Int, now: Date = Date()) -> String? {
        guard readers == 0 else { return nil }
        if let pid, host == ProcessInfo.processInfo.hostName, kill(pid, 0) != 0, errno == ESRCH {
            return "its owner, process \(pid), is gone"
        }
        if pid == nil, let leaseExpiresAt, now.timeIntervalSince1970 > leaseExpiresAt {
            return "its lease ran out \(Int(now.timeIntervalSince1970 - leaseExpiresAt)) s ago and no reader is connected"
        }
        return nil
    }

    /// "process 123 on host" or "a lease until 2026-11-28T10:00:00Z".
    public var holderDescription: String {
        if let pid { return "process \(pid) on \(host)" }
        if let leaseExpiresAt {
            let until = Date(timeIntervalSince1970: leaseExpiresAt).formatted(.iso8601)
            return "a lease taken on \(host) until \(until)"
        }
        return "an unknown holder on \(host)"
    }
}
