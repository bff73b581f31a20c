import BlockIO
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// Minimal blocking Unix-domain stream sockets for the control endpoint.
///
/// The endpoint carries a few small requests per backup, so a thread per connection with
/// blocking I/O is the simplest thing that is obviously correct.
enum UnixSocket {
    /// Binds and listens with the NBD server's implementation (`UnixSocketFile`): mode 0600,
    /// never a live server's path, only a stale socket replaced, never another kind of file.
    static func listen(path: String) throws -> (fd: Int32, identity: UnixSocketFile.Identity) {
        do {
            return try UnixSocketFile.listen(path: path, backlog: 64)
        } catch {
            switch error.kind {
            case .inUse: throw FilterError(.busy, error.message)
            case .notASocket, .invalidPath: throw FilterError(.invalidArgument, error.message)
            case .system: throw FilterError(.io, error.message)
            }
        }
    }
}
