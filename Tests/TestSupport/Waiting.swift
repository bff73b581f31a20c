import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Waits for a file to appear or to go, told by inotify: no polling, no sleeps.
public enum FileWatch {
    /// Waits until `path` exists (`toExist`) or is gone.
    /// - Parameter other: a descriptor that ends the wait early when it becomes readable (a
    ///   child's exit pipe: a server that died will never create its socket).
    /// - Returns: whether `path` reached the wanted state within `timeout` seconds.
    public static func wait(for path: String, toExist: Bool, timeout: Double = 60, unlessReadable other: Int32? = nil) -> Bool {
        var st = stat()
        let reached = { (lstat(path, &st) == 0) == toExist }
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        precondition(fd >= 0, "inotify_init1 failed: errno \(errno)")
        defer { close(fd) }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let mask = UInt32(IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF)
        guard inotify_add_watch(fd, directory, mask) >= 0 else { return reached() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            // Checked after the watch is in place, and after every event: nothing is missed.
            if reached() { return true }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return false }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            if let other { fds.append(pollfd(fd: other, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), Int32(min(left * 1000 + 1, 3_600_000))) < 0 && errno != EINTR { return reached() }
            if fds.count > 1 && fds[1].revents != 0 { return reached() }
            while buffer.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
        }
    }

    /// `wait(for:toExist:timeout:)` on a thread of its own, for async tests (the cooperative
    /// pool is not blocked meanwhile).
    public static func waitInBackground(for path: String, toExist: Bool, timeout: Double = 60) async -> Bool {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: wait(for: path, toExist: toExist, timeout: timeout)) }.start()
        }
    }
}

/// Checks `condition` every `interval` seconds until it holds or `timeout` passes.
///
/// Only for a state that nothing announces (no line printed, no file created, no callback):
/// a server noticing that clients went away, a merge under way. Anything that announces
/// itself is waited for on that signal instead (`ChildProcess.waitForLine`, `FileWatch`).
/// - Returns: whether `condition` held in time.
public func pollUntil(timeout: Double = 60, every interval: Double = 0.01, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while true {
        if try condition() { return true }
        if Date() >= deadline { return false }
        Thread.sleep(forTimeInterval: interval)
    }
}
