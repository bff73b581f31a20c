import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The kernel and initramfs `Tools/guest/build-image` builds (the guest's /init is
/// `Tools/guest/init`).
public struct GuestImage: Sendable {
    public var kernel: String
    public var initramfs: String

    /// `TESSERA_VM_TESTS=1`: the VM tests run (and fail, never skip, when something is missing).
    public static var testsEnabled: Bool { ProcessInfo.processInfo.environment["TESSERA_VM_TESTS"] == "1" }

    /// `$TESSERA_GUEST_CACHE` or /var/cache/tessera/guest, as build-image uses.
    public static var cacheDirectory: String {
        ProcessInfo.processInfo.environment["TESSERA_GUEST_CACHE"] ?? "/var/cache/tessera/guest"
    }

    /// The built image.
    /// - Throws: when it is missing, saying how to build it.
    public static func locate() throws -> GuestImage {
        let image = GuestImage(kernel: "\(cacheDirectory)/vmlinuz", initramfs: "\(cacheDirectory)/initramfs.cpio.gz")
        for file in [image.kernel, image.initramfs] where !FileManager.default.fileExists(atPath: file) {
            throw GuestError("the guest image is missing (\(file)): run Tools/guest/build-image (Tools/test --vm does)")
        }
        return image
    }

    /// qemu-system-x86_64 on PATH.
    /// - Throws: when it is missing, naming the package.
    public static func qemu() throws -> String {
        guard let path = ExternalTool.path("qemu-system-x86_64") else {
            throw GuestError("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86 (Tools/guest/build-image installs it)")
        }
        return path
    }
}

/// The guest's write load, passed on the kernel command line (see Tools/guest/init).
public struct GuestWorkload: Sendable {
    public var seed: Int = 1
    /// Operations per epoch: a manifest closes each epoch.
    public var operationsPerEpoch: Int = 30
    public var filesPerEpoch: Int = 10
    public var largestFileKiB: Int = 1024
    /// Epochs a manifest lists.
    public var epochsKept: Int = 3
    public var fsyncPercent: Int = 30
    public var pauseMilliseconds: Int = 0
    /// End cleanly after this manifest (0: run until shut down or killed).
    public var lastManifest: Int = 0

    public init() {}

    public var kernelArguments: [String] {
        ["tessera.seed=\(seed)", "tessera.ops=\(operationsPerEpoch)", "tessera.files=\(filesPerEpoch)",
         "tessera.maxkb=\(largestFileKiB)", "tessera.keep=\(epochsKept)", "tessera.fsync=\(fsyncPercent)",
         "tessera.pause=\(pauseMilliseconds)", "tessera.manifests=\(lastManifest)"]
    }
}

/// The guest's serial console, a file QEMU appends to; read as it grows.
public final class GuestConsole: @unchecked Sendable {
    public let path: String
    private let lock = NSLock()
    private var offset: UInt64 = 0
    private var pending = Data()
    private var all: [String] = []

    public init(path: String) { self.path = path }

    /// Every complete line so far (reads what QEMU appended since the last call).
    public var lines: [String] {
        lock.withLock {
            if let handle = FileHandle(forReadingAtPath: path) {
                defer { try? handle.close() }
                try? handle.seek(toOffset: offset)
                let data = handle.readDataToEndOfFile()
                offset += UInt64(data.count)
                pending.append(data)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                        .trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
                    all.append(line)
                    pending.removeSubrange(pending.startIndex...newline)
                }
            }
            return all
        }
    }

    /// The numbers of every `TESSERA-MANIFEST N` so far.
    public var manifests: [Int] {
        lines.compactMap { line in
            guard line.hasPrefix("TESSERA-MANIFEST ") else { return nil }
            return Int(line.dropFirst("TESSERA-MANIFEST ".count))
        }
    }

    /// The newest manifest announced so far (0: none yet).
    public var newestManifest: Int { manifests.max() ?? 0 }

    /// The last lines, for failure messages.
    public func tail(_ count: Int = 30) -> String { lines.suffix(count).joined(separator: "\n") }

    /// A line that means the guest failed: its own error marker, a kernel panic, an I/O or ext4 error.
    public static func isFailure(_ line: String) -> Bool {
        line.hasPrefix("TESSERA-ERROR") || line.contains("Kernel panic") || line.contains("I/O error")
            || line.contains("EXT4-fs error") || line.contains("Remounting filesystem read-only")
    }
}

/// A QEMU guest (TCG, q35, `-cpu max`) whose only disk is an NBD export, e.g. the filter's
/// `nbd+unix:///NAME?socket=SOCK`. The block node has `reconnect-delay`, so the guest's I/O
/// waits (instead of failing) while the NBD server is killed and restarted.
///
/// Sockets in `directory`: `qga.sock` (the guest agent), `qmp.sock` (the monitor);
/// `console.log` is the serial console. QEMU is SIGKILLed on deinit if still running.
public final class GuestVM: @unchecked Sendable {
    public let directory: String
    public let console: GuestConsole
    public let qemu: ChildProcess
    public var guestAgentSocket: String { "\(directory)/qga.sock" }
    public var monitorSocket: String { "\(directory)/qmp.sock" }
    public let bootedAt = Date()

    /// Boots the guest.
    /// - Parameters:
    ///   - nbdSocket, export: the disk (`nbd+unix:///EXPORT?socket=NBDSOCKET`).
    ///   - reconnectDelay: seconds QEMU retries a lost NBD connection before failing I/O.
    public init(image: GuestImage, nbdSocket: String, export: String, directory: String,
                workload: GuestWorkload = GuestWorkload(), memoryMiB: Int = 256, reconnectDelay: Int = 30) throws {
        self.directory = directory
        let consolePath = "\(directory)/console.log"
        try? FileManager.default.removeItem(atPath: consolePath)
        console = GuestConsole(path: consolePath)
        let blockdev: [String: Any] = [
            "driver": "nbd", "node-name": "disk0", "export": export,
            "server": ["type": "unix", "path": nbdSocket],
            "reconnect-delay": reconnectDelay, "discard": "unmap",
        ]
        let blockdevJSON = String(decoding: try JSONSerialization.data(withJSONObject: blockdev, options: [.sortedKeys]), as: UTF8.self)
        let append = (["console=ttyS0", "quiet", "panic=-1"] + workload.kernelArguments).joined(separator: " ")
        let arguments = [
            "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "\(memoryMiB)",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", "file:\(consolePath)",
            "-kernel", image.kernel, "-initrd", image.initramfs, "-append", append,
            "-blockdev", blockdevJSON,
            "-device", "virtio-blk-pci,drive=disk0",
            "-chardev", "socket,id=qga0,path=\(directory)/qga.sock,server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", "unix:\(directory)/qmp.sock,server=on,wait=off",
        ]
        qemu = try ChildProcess(try GuestImage.qemu(), arguments)
    }

    deinit { kill() }

    public var isRunning: Bool { qemu.isRunning }

    /// Waits for a console line that satisfies `predicate` (every line so far counts).
    /// - Throws: at the deadline, when QEMU exits first, or on a failure line (`GuestConsole.isFailure`).
    @discardableResult
    public func waitForLine(timeout: Double, _ what: String, _ predicate: (String) -> Bool) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let lines = console.lines
            if let bad = lines.first(where: GuestConsole.isFailure) {
                throw GuestError("the guest failed while waiting for \(what): \(bad)\n\(failureContext)")
            }
            if let line = lines.first(where: predicate) { return line }
            if !isRunning {
                throw GuestError("QEMU exited (\(qemu.waitForExit(timeout: 1)?.status ?? -1)) before \(what)\n\(failureContext)")
            }
            if Date() >= deadline { throw GuestError("no \(what) within \(Int(timeout)) s\n\(failureContext)") }
            usleep(20_000)
        }
    }

    /// Waits for `TESSERA-READY` (the file system is mounted, qemu-ga runs, the load starts).
    public func waitUntilReady(timeout: Double = 180) throws {
        try waitForLine(timeout: timeout, "TESSERA-READY") { $0 == "TESSERA-READY" }
    }

    /// Waits for a manifest newer than `after`; returns the newest announced.
    @discardableResult
    public func waitForManifest(after: Int, timeout: Double = 120) throws -> Int {
        try waitForLine(timeout: timeout, "a manifest after \(after)") { line in
            line.hasPrefix("TESSERA-MANIFEST ") && (Int(line.dropFirst("TESSERA-MANIFEST ".count)) ?? 0) > after
        }
        return console.newestManifest
    }

    /// Console tail and QEMU's stderr, for failure messages.
    public var failureContext: String {
        "console (\(console.path)):\n\(console.tail())\nqemu stderr: \(qemu.stderr)"
    }

    // MARK: - Monitor

    /// Runs QMP commands on one monitor connection (closed afterwards).
    public func withMonitor<T>(_ body: (QMPClient) throws -> T) throws -> T {
        let client = try QMPClient(path: monitorSocket)
        defer { client.close() }
        return try body(client)
    }

    /// QMP `stop`: the vCPUs stop and QEMU drains the guest's in-flight I/O.
    public func pause() throws { _ = try withMonitor { try $0.execute("stop") } }

    /// QMP `cont`.
    public func resume() throws { _ = try withMonitor { try $0.execute("cont") } }

    // MARK: - Guest agent

    /// Runs guest agent commands on one connection (closed afterwards, so another client can connect).
    public func withGuestAgent<T>(timeout: Double = 60, _ body: (GuestAgentClient) throws -> T) throws -> T {
        let client = try GuestAgentClient(path: guestAgentSocket, timeout: timeout)
        defer { client.close() }
        return try body(client)
    }

    /// Freezes the guest's file systems, runs `body`, and thaws them whatever happens.
    /// - Throws: when nothing was frozen (the guest's ext4 must be), or what `body` threw.
    public func whileFrozen<T>(_ body: () throws -> T) throws -> T {
        let frozen = try withGuestAgent { try $0.freeze() }
        defer { _ = try? withGuestAgent { try $0.thaw() } }
        guard frozen >= 1 else { throw GuestError("guest-fsfreeze-freeze froze \(frozen) file systems") }
        return try body()
    }

    /// Asks the guest to end (guest-shutdown: the load finishes its epoch, seals it, unmounts
    /// and powers off) and waits for QEMU to exit.
    /// - Returns: the last manifest (`TESSERA-DONE N`).
    @discardableResult
    public func shutdown(timeout: Double = 120) throws -> Int {
        try withGuestAgent { try $0.send("guest-shutdown") }
        let line = try waitForLine(timeout: timeout, "TESSERA-DONE") { $0.hasPrefix("TESSERA-DONE ") }
        let deadline = Date().addingTimeInterval(30)
        while isRunning && Date() < deadline { usleep(20_000) }
        guard !isRunning else { throw GuestError("QEMU still runs 30 s after TESSERA-DONE") }
        return Int(line.dropFirst("TESSERA-DONE ".count)) ?? 0
    }

    /// SIGKILLs QEMU.
    public func kill() {
        if isRunning {
            qemu.kill()
        }
    }
}
