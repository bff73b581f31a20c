import BlockIO
import Foundation
@testable import NBD
import Testing
import TestSupport

/// Throughput side by side with qemu-nbd on the same file: numbers to read, not assertions
/// (the machine is noisy). Runs only with TESSERA_BENCH=1.
@Suite(.serialized)
struct NBDBenchmarkTests {
    static var enabled: Bool { ProcessInfo.processInfo.environment["TESSERA_BENCH"] == "1" }

    private func bench(_ uri: String, write: Bool) throws -> Double {
        let start = Date()
        try run("qemu-img", ["bench", "-f", "raw", "-c", "4096", "-d", "16", "-s", "65536"] + (write ? ["-w"] : []) + [uri])
        return 256.0 / Date().timeIntervalSince(start)
    }

    @Test(.enabled(if: enabled))
    func writeAndReadThroughputAgainstQemuNbd() async throws {
        let dir = try TemporaryDirectory("nbd-bench")
        try DiskModel.create(at: dir.file("disk.raw"), size: 256 << 20)
        var ours: (Double, Double) = (0, 0)
        try await withServer([try FileExport(path: dir.file("disk.raw"), name: "disk")], in: dir) { server in
            _ = try bench(server.uri("disk"), write: true) // warm-up: allocate the file
            ours = (try bench(server.uri("disk"), write: true), try bench(server.uri("disk"), write: false))
        }
        let qsock = dir.file("q.sock")
        let q = try ChildProcess.qemuNBD(["-f", "raw", "-x", "disk", "-t", dir.file("disk.raw")], socket: qsock)
        defer { q.kill() }
        let quri = "nbd+unix:///disk?socket=\(qsock)"
        let theirs = (try bench(quri, write: true), try bench(quri, write: false))
        print(String(format: "NBD bench (qemu-img bench, 64 KiB, depth 16, 256 MiB): tessera write %.0f MiB/s read %.0f MiB/s; qemu-nbd write %.0f MiB/s read %.0f MiB/s",
                     ours.0, ours.1, theirs.0, theirs.1))
        #expect(ours.0 > 0 && theirs.0 > 0)
    }
}
