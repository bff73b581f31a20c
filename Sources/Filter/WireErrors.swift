import BlockIO
import ChangeTracking
import NBD
import TrackerControl

/// The filter's two wires, and the one mapping from any error to each.
///
/// Everything below the wires throws the error that says what happened (`BlockIOError`,
/// `TrackerError`, `FilterError`, `FileLock.Held`...), wrapping with `cause` where it adds
/// context. Only the two edges translate: the control server (every request's error, through
/// `control(_:)`) and the NBD exports (every export call's error, through `nbd(_:)`, called by
/// the NBD server's transmission phase). docs/CONTROL.md "Errors" has the table.
///
/// The one rule for causes: an error whose own category is the generic "I/O error" takes a
/// more specific meaning from its cause only when the cause is a full file system, because a
/// client acts on that one (QEMU pauses the guest on `ENOSPC` with `werror=enospc`; the
/// operator frees space). Other causes stay in the message and in the logs.
enum WireErrors {
    /// The control-protocol error for any error: its code (the status number follows from it)
    /// and a message that says what to do. The original error is kept as the `cause`.
    static func control(_ error: any Error) -> FilterError {
        if let e = error as? FilterError { return e }
        return FilterError(controlCode(error), "\(error)", cause: error)
    }

    /// The NBD error (and so the errno on the wire) for any error an export call threw.
    static func nbd(_ error: any Error) -> NBDError {
        switch error {
        case let e as NBDError:
            return e
        case let e as BlockIOError:
            return NBDError(e)
        case let e as FilterError:
            switch e.code {
            case .invalidArgument: return NBDError(.invalid, e.message)
            case .permission: return NBDError(.permission, e.message)
            default: return NBDError(outOfSpace(e) ? .noSpace : .io, e.message)
            }
        case let e as TrackerError:
            if e.code == .invalidArgument { return NBDError(.invalid, e.message) }
            return NBDError(outOfSpace(e) ? .noSpace : .io, e.message)
        default:
            return NBDError(.io, "\(error)")
        }
    }

    private static func controlCode(_ error: any Error) -> FilterError.Code {
        switch error {
        case let e as TrackerError:
            switch e.code {
            case .fullReadRequired: return .fullReadRequired
            case .invalidArgument: return .invalidArgument
            case .checkpointOpen: return .checkpointOpen
            case .noCheckpoint: return .noCheckpoint
            case .closed, .io: return .io
            }
        case let e as BlockIOError:
            switch e.code {
            case .notFound: return .notFound
            case .permissionDenied: return .permission
            case .invalidArgument, .notRegularFile: return .invalidArgument
            case .corrupt: return .damaged
            case .noSpace, .shortRead, .io: return .io
            }
        case is FileLock.Held, is FilteredDisk.DiskFileHeld:
            return .busy
        case let e as NBDError:
            switch e.code {
            case .permission: return .permission
            case .invalid: return .invalidArgument
            case .shutdown: return .busy
            default: return .io
            }
        default:
            return .io
        }
    }

    /// Whether an I/O error comes from a full file system somewhere down its causes.
    private static func outOfSpace(_ error: any Error) -> Bool {
        switch error {
        case let e as BlockIOError: return e.code == .noSpace
        case let e as NBDError: return e.code == .noSpace
        case let e as TrackerError: return e.code == .io && e.cause.map(outOfSpace) == true
        case let e as FilterError: return e.code == .io && e.cause.map(outOfSpace) == true
        default: return false
        }
    }
}
