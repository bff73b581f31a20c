import BlockIO
import Filter
import TrackerControl
import Foundation
import Synchronization
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// One filter serving several disks, over its Unix socket and over TCP on loopback, and two
/// RELEASEs of one disk at once.
struct MultiDiskTests {
    /// A loopback port nobody listens on right now (bind to 0, read it back, close).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Bool in
                bind(fd, p, len) == 0 && getsockname(fd, p, &len) == 0
            }
        }
        guard bound else { throw CommandError(description: "cannot find a free loopback port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io", "nbdinfo")))
    func twoDisksOverUnixAndTCPAreTrackedApart() throws {
        let dir = try TemporaryDirectory("filter-multi")
        let size: UInt64 = 8 << 20
        var modelA = try DiskModel.create(at: dir.file("a.raw"), size: size, seed: 1)
        var modelB = try DiskModel.create(at: dir.file("b.raw"), size: size, seed: 2)
        let port = try Self.freePort()
        let filter = FilterProcess(directory: dir, diskName: "a", diskPath: dir.file("a.raw"),
                                   extraArguments: ["--disk", "b=\(dir.file("b.raw"))", "--tcp", "127.0.0.1:\(port)"])
        try withFilter(filter) { f in
            let all = try f.client().status()
            #expect(all.map(\.name) == ["a", "b"])
            let startA = all[0].changeID, startB = all[1].changeID
            // Disk a through the Unix socket, disk b through TCP on loopback.
            let tcpB = "nbd://127.0.0.1:\(port)/b"
            let list = try runCommand("nbdinfo", ["--list", "nbd://127.0.0.1:\(port)"])
            #expect(list.succeeded && list.stdout.contains("export=\"a\"") && list.stdout.contains("export=\"b\""), "nbdinfo --list over TCP: \(list.stdout) \(list.stderr)")
            try runCommand("qemu-io", ["-f", "raw", "-c", "write -P 0x61 1M 64k", f.uri("a")])
            try runCommand("qemu-io", ["-f", "raw", "-c", "write -P 0x62 5M 4k", tcpB])
            modelA.write([UInt8](repeating: 0x61, count: 65536), at: 1 << 20)
            modelB.write([UInt8](repeating: 0x62, count: 4096), at: 5 << 20)
            // Each disk's changes are its own writes and nothing of the other's.
            #expect(try nbdinfoMapBlocks(uri: f.uri("a"), context: "qemu:dirty-bitmap:active") == [16])
            #expect(try nbdinfoMapBlocks(uri: tcpB, context: "qemu:dirty-bitmap:active") == [80])
            let changesA = try f.client().allChanges(disk: "a", since: startA)
            let changesB = try f.client().allChanges(disk: "b", since: startB)
            #expect(changesA.map { [$0.offset, $0.length] } == [[1 << 20, 65536]])
            #expect(changesB.map { [$0.offset, $0.length] } == [[5 << 20, 65536]])
            let readB = try runCommand("qemu-io", ["-f", "raw", "-c", "read -P 0x62 5M 4k", tcpB])
            #expect(readB.succeeded && !readB.stdout.contains("Pattern verification failed"), "\(readB.stdout)")
        }
        let sameA = try fileBytes(dir.file("a.raw")) == modelA.bytes
        let sameB = try fileBytes(dir.file("b.raw")) == modelB.bytes
        #expect(sameA && sameB, "a flat file differs from its model (a: \(sameA), b: \(sameB))")
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func twoReleasesAtOnceMergeOnceAndLoseNothing() throws {
        let dir = try TemporaryDirectory("filter-busy")
        let size: UInt64 = 64 << 20
        var model = try DiskModel.create(at: dir.file("d.raw"), size: size, seed: 3)
        let filter = FilterProcess(directory: dir, diskPath: dir.file("d.raw"))
        try withFilter(filter) { f in
            let start = try f.status().changeID
            _ = try f.client().checkpoint(disk: "d0")
            // Enough in the overlay that the merge takes a while.
            var writes: [String] = []
            for i in 0..<48 {
                let offset = UInt64(i) * (1 << 20) + 4096
                writes += ["-c", "write -P \(i + 1) \(offset) 256k"]
                model.write([UInt8](repeating: UInt8(i + 1), count: 256 << 10), at: offset)
            }
            try runCommand("qemu-io", ["-f", "raw"] + writes + [f.uri])
            // Two releases race: one merges; the other is refused (busy), or finds the
            // checkpoint already gone — never a second merge, never an error that loses data.
            let results = Mutex<[CommandResult]>([])
            DispatchQueue.concurrentPerform(iterations: 2) { _ in
                if let r = try? f.cli(["release", "--disk", "d0"]) { results.withLock { $0.append(r) } }
            }
            let all = results.withLock { $0 }
            #expect(all.count == 2)
            #expect(all.filter(\.succeeded).count == 1, "exactly one release merges: \(all.map { $0.stderr })")
            for r in all where !r.succeeded {
                #expect(r.stderr.contains("already running") || r.stderr.contains("no open checkpoint"), "\(r.stderr)")
            }
            #expect(try f.status().checkpoint == nil)
            let changes = try f.changes(since: start)
            #expect(changes.reduce(0) { $0 + $1.length } == 48 * 5 * 65536, "48 writes of 256 KiB at 4 KiB past a boundary touch 5 blocks each")
        }
        let same = try fileBytes(dir.file("d.raw")) == model.bytes
        #expect(same, "after the racing releases the base differs from the model")
    }
}
