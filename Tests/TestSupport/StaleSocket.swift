import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Leaves a socket file nobody listens on: a process binds and listens, then is SIGKILLed
/// (what a crashed server leaves behind).
public func makeStaleSocket(_ path: String) throws {
    let script = "import os, socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(1)\nos.kill(os.getpid(), 9)\n"
    let r = try runCommand("/usr/bin/python3", ["-c", script, path])
    var st = stat()
    guard r.status != 0, lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else {
        throw CommandError(description: "could not leave a stale socket at \(path): \(r.status) \(r.stderr)")
    }
}
