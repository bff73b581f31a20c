#if canImport(Glibc)
import Glibc
#endif

/// The listening Unix sockets of the NBD server and of the filter's control endpoint: one
/// implementation for both, so neither can be taken over or opened to other users.
///
/// - **No theft.** A path that a live server listens on is never replaced: `bind` never
///   replaces a file, and when one is in the way a non-blocking `connect` probes it. If
///   something answers (or its backlog is full), the start is refused. Only a socket nobody
///   listens on (`ECONNREFUSED`: its process is gone) is removed, and only if it is still the
///   same file right before the `unlink`. A file that is not a socket is never removed.
/// - **Owner only, with no window.** The socket is `fchmod`ed to 0600 *before* `bind`: Linux
///   creates the file with the socket's mode minus the umask, so it never exists with a looser
///   mode, and the process-wide umask (shared by every thread) is never touched. A `chmod` to
///   exactly 0600 (a strict umask could have left the owner without write permission) and an
///   `lstat` check follow, still before `listen`: until then every `connect` is refused, and
///   permission is checked at `connect` time, so no client ever passed a looser mode.
/// - **Peers.** `peer(of:)` reads `SO_PEERCRED`; `mayConnect` admits root and the server's own
///   user, so a file opened up later (a chmod, a bind mount) still lets nobody else in.
///
/// Two servers started on the same stale path at the same instant can still race (one may
/// remove the other's fresh socket between its check and its `unlink`); servers are not
/// expected to be started that way, and the loser's clients get "no such file", never the
/// wrong server.
package enum UnixSocketFile {
    /// Why a listening socket could not be set up; `message` says what to do.
    package struct Failure: Error, Sendable, CustomStringConvertible {
        package enum Kind: Sendable, Equatable {
            /// A live server listens on the path.
            case inUse
            /// The path is taken by a file that is not a socket (left alone).
            case notASocket
            /// The path is too long for a Unix socket address.
            case invalidPath
            /// A system call failed.
            case system
        }

        package var kind: Kind
        package var message: String
        package var description: String { message }
    }

    /// Device and inode of a socket file, so it is removed only while it is still the same file.
    package struct Identity: Sendable, Equatable {
        var device: UInt64
        var inode: UInt64
    }

    /// A connected peer, from `SO_PEERCRED` (the credentials it had when it connected).
    package struct Peer: Sendable, Equatable, CustomStringConvertible {
        package var pid: Int32
        package var uid: UInt32
        package var gid: UInt32
        package var description: String { "uid \(uid) (pid \(pid))" }
    }

    /// `getsockopt(SO_PEERCRED)` fills a C `struct ucred { pid_t pid; uid_t uid; gid_t gid; }`,
    /// which Glibc does not import; a tuple of the same three 32-bit fields has its layout.
    package typealias RawCredentials = (pid: Int32, uid: UInt32, gid: UInt32)

    package static func address(_ path: String) throws(Failure) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw Failure(kind: .invalidPath,
                          message: "socket path \"\(path)\" must be 1 to \(capacity - 1) bytes long; use a shorter path")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return addr
    }

    /// Creates a listening socket at `path`, mode 0600, refusing a path a live server uses.
    /// - Returns: the listening descriptor (close-on-exec, blocking) and the file's identity,
    ///   for `remove(_:ifStill:)` when the server stops.
    package static func listen(path: String, backlog: Int32 = 128) throws(Failure) -> (fd: Int32, identity: Identity) {
        var addr = try address(path)
        // Each pass either binds or clears one obstacle; a path that keeps being recreated by
        // someone else ends as "in use".
        for _ in 0..<4 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw system("create a socket for \(path)") }
            _ = fchmod(fd, 0o600)
            let bound = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if bound == 0 {
                do throws(Failure) {
                    let identity = try ownerOnly(path)
                    guard Glibc.listen(fd, backlog) == 0 else { throw system("listen on \(path)") }
                    return (fd, identity)
                } catch {
                    close(fd)
                    unlink(path)
                    throw error
                }
            }
            let bindErrno = errno
            close(fd)
            guard bindErrno == EADDRINUSE else {
                throw system("bind \(path)", errno: bindErrno,
                             advice: "check that its directory exists and that this user may create files in it")
            }
            switch probe(path) {
            case .absent:
                continue
            case .live:
                throw Failure(kind: .inUse, message: "\(path) is in use: a running server accepts connections on it; stop that server first, or choose another path")
            case .notASocket:
                throw Failure(kind: .notASocket, message: "\(path) exists and is not a socket; it was left untouched: remove it yourself, or choose another path")
            case .stale(let identity):
                remove(path, ifStill: identity)
            case .unknown(let reason):
                throw Failure(kind: .system, message: "\(path) exists and cannot be probed (\(reason)); if no server uses it, remove it, or choose another path")
            }
        }
        throw Failure(kind: .inUse, message: "\(path) keeps being recreated by another process; stop it, or choose another path")
    }

    /// What is at a path, as far as a new listener is concerned.
    package enum Probe: Sendable, Equatable {
        case absent
        /// Something accepts connections (or its backlog is full).
        case live
        /// A socket nobody listens on.
        case stale(Identity)
        case notASocket
        case unknown(String)
    }

    package static func probe(_ path: String) -> Probe {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            return errno == ENOENT ? .absent : .unknown(String(cString: strerror(errno)))
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else { return .notASocket }
        guard var addr = try? address(path) else { return .unknown("the path is too long") }
        // Non-blocking, so a hung server with a full backlog cannot block the probe.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return .unknown(String(cString: strerror(errno))) }
        defer { close(fd) }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if r == 0 { return .live }
        switch errno {
        case EAGAIN, EINPROGRESS: return .live
        case ECONNREFUSED: return .stale(Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)))
        case ENOENT: return .absent
        default: return .unknown(String(cString: strerror(errno)))
        }
    }

    /// Removes the socket file at `path` if it is still the file with `identity` (a server
    /// stopping never removes a successor's socket).
    package static func remove(_ path: String, ifStill identity: Identity) {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK,
              Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) == identity else { return }
        unlink(path)
    }

    /// The credentials of the process at the other end of a connected Unix socket.
    package static func peer(of fd: Int32) -> Peer? {
        var raw: RawCredentials = (0, 0, 0)
        var length = socklen_t(MemoryLayout<RawCredentials>.size)
        let r = withUnsafeMutableBytes(of: &raw) { getsockopt(fd, SOL_SOCKET, SO_PEERCRED, $0.baseAddress, &length) }
        guard r == 0, Int(length) == MemoryLayout<RawCredentials>.size else { return nil }
        return Peer(raw)
    }

    /// Root and the user the server runs as may connect; nobody else.
    package static func mayConnect(_ peer: Peer) -> Bool {
        peer.uid == 0 || peer.uid == geteuid()
    }

    /// The log line for a refused peer.
    package static func refusal(_ peer: Peer?, socket: String) -> String {
        "refused a connection on \(socket) from \(peer.map { "\($0)" } ?? "a peer whose credentials could not be read"): only root and uid \(geteuid()) may connect; run the client as one of them"
    }

    /// Sets the file to exactly 0600 and checks it, before `listen`.
    private static func ownerOnly(_ path: String) throws(Failure) -> Identity {
        guard chmod(path, 0o600) == 0 else { throw system("set mode 0600 on \(path)") }
        var st = stat()
        guard lstat(path, &st) == 0 else { throw system("check \(path)") }
        guard st.st_mode & S_IFMT == S_IFSOCK, st.st_mode & 0o777 == 0o600 else {
            throw Failure(kind: .system, message: "\(path) did not become a socket with mode 0600 (mode \(String(st.st_mode & 0o7777, radix: 8))); another process may be changing this directory: use a directory only this user can write to")
        }
        return Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    private static func system(_ action: String, errno code: Int32 = errno, advice: String? = nil) -> Failure {
        let reason = String(cString: strerror(code))
        return Failure(kind: .system, message: "cannot \(action): \(reason)\(advice.map { "; \($0)" } ?? "")")
    }
}

extension UnixSocketFile.Peer {
    package init(_ raw: UnixSocketFile.RawCredentials) {
        self.init(pid: raw.pid, uid: raw.uid, gid: raw.gid)
    }
}
