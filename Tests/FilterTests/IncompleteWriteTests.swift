import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Item 17: clients that send a WRITE header and all but the last byte of its payload cannot
/// make the filter hold more than its payload budget, cannot stall an honest client forever,
/// and corrupt nothing whether they finish or are cut off.
@Suite(.serialized)
struct IncompleteWriteTests {
    static let attackers = 40
    static let writeSize = 32 << 20
    /// NBDServer's default payload budget.
    static let budget = 256 << 20
    /// What the filter may hold on top of the budget: bytes of waiting connections that were
    /// already read when they had to wait (at most one socket read burst each), the honest
    /// client's requests, and allocator slack.
    static let margin = 64 << 20
    static var diskSize: UInt64 { UInt64(attackers + 2) * UInt64(writeSize) }
    static var honestOffset: Int { attackers * writeSize }

    /// The raw clients, one thread each: handshake, WRITE header for `size` bytes at
    /// `i * size`, all of its payload (byte value i+1) but the last byte. Then
    /// `finish`: on a line on stdin, the last byte, and the reply; `hold`: wait until the
    /// server closes the connection.
    static let script = #"""
        import socket, struct, sys, threading
        path, export, count, size, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        lock = threading.Lock()
        def say(*words):
            with lock:
                print(*words, flush=True)
        def recv_exact(s, n):
            b = bytearray()
            while len(b) < n:
                chunk = s.recv(n - len(b))
                if not chunk:
                    raise EOFError("the server closed the connection")
                b += chunk
            return bytes(b)
        def handshake(s):
            recv_exact(s, 18)
            s.sendall(struct.pack(">I", 3))
            name = export.encode()
            data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
            s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, len(data)) + data)
            while True:
                _, _, kind, length = struct.unpack(">QIII", recv_exact(s, 20))
                recv_exact(s, length)
                if kind == 1:
                    return
                if kind & 0x80000000:
                    raise RuntimeError("GO refused: %x" % kind)
        go = threading.Event()
        def attacker(i):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(900)
                s.connect(path)
                handshake(s)
                block = memoryview(bytes([i + 1]) * (1 << 20))
                s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, i, i * size, size))
                left = size - 1
                while left > 0:
                    n = min(left, len(block))
                    s.sendall(block[:n])
                    left -= n
                say("sent", i)
            except Exception as e:
                say("error", i, repr(e))
                return
            if mode == "finish":
                go.wait()
                try:
                    s.sendall(block[:1])
                    magic, error, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
                    say("done", i, error if magic == 0x67446698 and cookie == i else "bad-reply")
                except Exception as e:
                    say("error", i, repr(e))
            else:
                try:
                    say("closed" if not s.recv(1) else "unexpected", i)
                except OSError:
                    say("closed", i)
        threads = [threading.Thread(target=attacker, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        if mode == "finish":
            sys.stdin.readline()
            go.set()
        for t in threads:
            t.join()
        """#

    /// The attack script as a child process; its lines are read as they come, and a line on
    /// its stdin lets every client send its last byte (`finish` mode).
    static func attack(scriptPath: String, socket: String, export: String, mode: String) throws -> ChildProcess {
        try ChildProcess("/usr/bin/python3", [scriptPath, socket, export, "\(attackers)", "\(writeSize)", mode],
                         input: .pipe, mergeOutput: true)
    }

    /// Reads until `count` lines of `attack` start with `prefix`; false if the script ended first.
    static func wait(_ attack: ChildProcess, count: Int, prefix: String) -> Bool {
        attack.waitForLines(timeout: 900) { lines in lines.filter { $0.hasPrefix(prefix) }.count >= count }
    }

    /// A field of /proc/PID/status in bytes (VmRSS, VmHWM).
    static func memory(_ pid: Int32, _ field: String) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        for line in status.split(separator: "\n") where line.hasPrefix(field + ":") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        throw CommandError(description: "no \(field) in /proc/\(pid)/status")
    }

    /// Every byte of `[offset, offset + length)` in the file equals `value`.
    static func holds(_ path: String, offset: Int, length: Int, value: UInt8) throws -> Bool {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        let expected = Data(repeating: value, count: 1 << 20)
        var left = length
        while left > 0 {
            let n = min(left, 1 << 20)
            guard let chunk = try handle.read(upToCount: n), chunk.count == n, chunk == expected.prefix(n) else { return false }
            left -= n
        }
        return true
    }

    static func megabytes(_ bytes: Int) -> String { "\(bytes >> 20) MiB" }

    /// The slow clients all finish in the end: the filter never held much more than the
    /// budget, an honest qemu-io writing meanwhile got through, and every write landed whole.
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func slowWritersStayWithinTheBudgetAndLandIntact() throws {
        let dir = try TemporaryDirectory("incomplete-finish")
        let disk = dir.file("disk.raw")
        try DiskModel.create(at: disk, size: Self.diskSize)
        try Data(Self.script.utf8).write(to: URL(fileURLWithPath: dir.file("attack.py")))
        let filter = FilterProcess(directory: dir, diskPath: disk)
        try withFilter(filter) { filter in
            let pid = filter.pid
            let baseline = try Self.memory(pid, "VmRSS")
            let attack = try Self.attack(scriptPath: dir.file("attack.py"), socket: filter.socketPath, export: "d0", mode: "finish")
            #expect(Self.wait(attack, count: Self.budget / Self.writeSize, prefix: "sent"), "\(attack.lines)")

            // An honest client arrives while the budget is held by incomplete writes.
            let honest = try ChildProcess("qemu-io", ["-f", "raw", "-c", "write -P 0xee \(Self.honestOffset) 1M",
                                                      "-c", "read -P 0xee \(Self.honestOffset) 1M", filter.uri], mergeOutput: true)

            attack.write(Data("go\n".utf8))
            let lines = attack.wait(timeout: 900).result.stdout.split(separator: "\n").map(String.init)
            let done = lines.filter { $0.hasPrefix("done") }
            #expect(done.count == Self.attackers && done.allSatisfy { $0.hasSuffix(" 0") }, "\(lines)")
            let honestRun = honest.wait(timeout: 900).result
            #expect(honestRun.status == 0 && !honestRun.stdout.contains("failed"), "\(honestRun.stdout)")

            let peak = try Self.memory(pid, "VmHWM")
            print("incomplete writes (finish): baseline RSS \(Self.megabytes(baseline)), peak \(Self.megabytes(peak)), growth \(Self.megabytes(peak - baseline))")
            #expect(peak - baseline <= Self.budget + Self.margin,
                    "the filter grew by \(Self.megabytes(peak - baseline)) (baseline \(Self.megabytes(baseline))); the budget is \(Self.megabytes(Self.budget)) + \(Self.megabytes(Self.margin)) margin")
            filter.stop()
        }
        for i in 0..<Self.attackers {
            #expect(try Self.holds(disk, offset: i * Self.writeSize, length: Self.writeSize, value: UInt8(i + 1)),
                    "write \(i) did not land whole")
        }
        #expect(try Self.holds(disk, offset: Self.honestOffset, length: 1 << 20, value: 0xee))
    }

    /// The slow clients never finish: while others wait, each is cut off once it held budget
    /// for the stall timeout, the honest client gets through, and none of the unfinished
    /// writes reaches the disk.
    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func stalledWritersAreCutOffAndAnHonestClientGetsThrough() throws {
        let dir = try TemporaryDirectory("incomplete-hold")
        let disk = dir.file("disk.raw")
        try DiskModel.create(at: disk, size: Self.diskSize)
        try Data(Self.script.utf8).write(to: URL(fileURLWithPath: dir.file("attack.py")))
        let filter = FilterProcess(directory: dir, diskPath: disk, extraArguments: ["--payload-stall-timeout", "2"])
        try withFilter(filter) { filter in
            let pid = filter.pid
            let baseline = try Self.memory(pid, "VmRSS")
            let attack = try Self.attack(scriptPath: dir.file("attack.py"), socket: filter.socketPath, export: "d0", mode: "hold")
            #expect(Self.wait(attack, count: Self.budget / Self.writeSize, prefix: "sent"), "\(attack.lines)")

            let out = try run("qemu-io", ["-f", "raw", "-c", "write -P 0xee \(Self.honestOffset) 1M",
                                          "-c", "read -P 0xee \(Self.honestOffset) 1M", filter.uri])
            #expect(!out.contains("failed"), "\(out)")

            let peak = try Self.memory(pid, "VmHWM")
            print("incomplete writes (hold): baseline RSS \(Self.megabytes(baseline)), peak \(Self.megabytes(peak)), growth \(Self.megabytes(peak - baseline))")
            #expect(peak - baseline <= Self.budget + Self.margin,
                    "the filter grew by \(Self.megabytes(peak - baseline)); the budget is \(Self.megabytes(Self.budget)) + \(Self.megabytes(Self.margin)) margin")
            #expect(filter.log.contains("stalled"), "no stalled connection was closed: \(filter.log)")
            filter.stop()
            _ = attack.wait(timeout: 900)
        }
        for i in 0..<Self.attackers {
            #expect(try Self.holds(disk, offset: i * Self.writeSize, length: Self.writeSize, value: 0),
                    "part of unfinished write \(i) reached the disk")
        }
        #expect(try Self.holds(disk, offset: Self.honestOffset, length: 1 << 20, value: 0xee))
    }
}
