import BlockIO

/// The NBD module's one error type: an errno-like code plus a message that says what went
/// wrong and what to do about it.
///
/// Exports throw it to choose the errno the client sees (`.noSpace` → `ENOSPC`); the server and
/// the client throw it for protocol violations and connection failures.
public struct NBDError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The category of the error. The first group maps to NBD wire errno values; the rest are
    /// local (handshake, protocol, connection) and travel as `EIO` if they ever reach the wire.
    public enum Code: Sendable, Equatable, Hashable {
        /// `EPERM`: the export is read-only or the operation is not allowed.
        case permission
        /// `EIO`: the backing storage failed.
        case io
        /// `ENOMEM`.
        case noMemory
        /// `EINVAL`: bad offset, length, flags or command.
        case invalid
        /// `ENOSPC`: the backing storage is full.
        case noSpace
        /// `EOVERFLOW`: a request too large for the server.
        case overflow
        /// `ENOTSUP`: the export cannot do this (for example fast zeroing).
        case notSupported
        /// `ESHUTDOWN`: the server is going away.
        case shutdown
        /// The peer broke the protocol (bad magic, malformed message); the connection is dropped.
        case protocolViolation
        /// The server refused an option (unknown export, unsupported option, ...).
        case refused
        /// The socket failed or closed.
        case connection
        /// A malformed `nbd://` or `nbd+unix://` URI.
        case badURI
        /// A server could not listen: a live server already listens on the socket path.
        case addressInUse
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// Maps a storage error to the errno the client should see.
    public init(_ error: BlockIOError) {
        switch error.code {
        case .noSpace: self.init(.noSpace, error.message)
        case .permissionDenied: self.init(.permission, error.message)
        case .invalidArgument: self.init(.invalid, error.message)
        default: self.init(.io, error.message)
        }
    }

    /// Any error thrown by an export, as the NBD error it becomes on the wire: the default of
    /// `NBDExport.nbdError(for:)`.
    static func from(_ error: any Error) -> NBDError {
        if let e = error as? NBDError { return e }
        if let e = error as? BlockIOError { return NBDError(e) }
        return NBDError(.io, "\(error)")
    }

    /// The NBD wire errno (proto.md "Error values"; the numbers are Linux's).
    var wireErrno: UInt32 {
        switch code {
        case .permission: return 1
        case .io: return 5
        case .noMemory: return 12
        case .invalid: return 22
        case .noSpace: return 28
        case .overflow: return 75
        case .notSupported: return 95
        case .shutdown: return 108
        case .protocolViolation, .refused, .connection, .badURI, .addressInUse: return 5
        }
    }

    /// The code for an errno received from a server.
    static func code(wireErrno: UInt32) -> Code {
        switch wireErrno {
        case 1: return .permission
        case 12: return .noMemory
        case 22: return .invalid
        case 28: return .noSpace
        case 75: return .overflow
        case 95: return .notSupported
        case 108: return .shutdown
        default: return .io
        }
    }
}
