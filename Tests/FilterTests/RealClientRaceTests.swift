import Filter
import TrackerControl
import Foundation
import Testing
import TestSupport

/// Trust item 1 as it was found, from outside: two libnbd connections to a running filter
/// send a WRITE and a TRIM (or WRITE_ZEROES, with and without NO_HOLE and FUA) for the same
/// 64 KiB block at the same time, block after block; some rounds take a checkpoint in the
/// middle. Afterwards every block the filter reports as "reads as zero" since the start must
/// read as zeroes in the disk file, or the next incremental would store zeroes over data.
@Suite(.serialized)
struct RealClientRaceTests {
    static let blocks = 400

    /// Runs under the system's python, which has libnbd's binding (python3-libnbd).
    static let script = """
        import nbd, sys, threading
        uri, blocks, kind, checkpoint_at, control, tessera = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
        import subprocess
        writer, zeroer = nbd.NBD(), nbd.NBD()
        writer.connect_uri(uri)
        zeroer.connect_uri(uri)
        data = b'\\xa5' * 65536
        barrier = threading.Barrier(2)
        errors = []
        def write_side():
            for k in range(blocks):
                barrier.wait()
                writer.pwrite(data, k * 65536)
                if k == checkpoint_at:
                    subprocess.run([tessera, 'filter', 'checkpoint', '--disk', 'd0', '--control', control], check=True, capture_output=True)
        def zero_side():
            for k in range(blocks):
                barrier.wait()
                if kind == 'trim':
                    zeroer.trim(65536, k * 65536)
                elif kind == 'zero':
                    zeroer.zero(65536, k * 65536)
                else:
                    zeroer.zero(65536, k * 65536, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
        threads = [threading.Thread(target=write_side), threading.Thread(target=zero_side)]
        for t in threads: t.start()
        for t in threads: t.join()
        writer.flush()
        writer.shutdown()
        zeroer.shutdown()
        """

    @Test(.enabled(if: ExternalTool.available("nbdsh")), arguments: ["trim", "zero", "zero-nohole-fua"], [-1, 150])
    func realClientsRacingAWriteAndAZeroNeverLeaveDataUnderAZeroTag(kind: String, checkpointAt: Int) throws {
        let dir = try TemporaryDirectory("filter-real-race")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: UInt64(Self.blocks) * 65536)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let start = try f.status().changeID
            try Self.script.write(toFile: dir.file("race.py"), atomically: true, encoding: .utf8)
            try run("/usr/bin/python3", [dir.file("race.py"), f.uri, "\(Self.blocks)", kind, "\(checkpointAt)",
                                         f.controlPath, Tessera.binary])
            // With a checkpoint open, the answer describes the frozen base: the file itself.
            let changes = try f.changes(since: start)
            let base = try fileBytes(diskPath)
            var wrong: [UInt64] = []
            for e in changes where e.zero {
                for block in (e.offset / 65536)..<((e.offset + e.length) / 65536)
                where base[Int(block * 65536)..<Int((block + 1) * 65536)].contains(where: { $0 != 0 }) {
                    wrong.append(block)
                }
            }
            #expect(wrong.isEmpty, "\(kind), checkpoint at \(checkpointAt): \(wrong.count) blocks hold data but the filter says they read as zero: \(wrong.prefix(10))")
            if checkpointAt >= 0 {
                #expect(try f.cli(["release", "--disk", "d0"]).succeeded)
                let after = try f.changes(since: start)
                let live = try fileBytes(diskPath)
                for e in after where e.zero {
                    for block in (e.offset / 65536)..<((e.offset + e.length) / 65536)
                    where live[Int(block * 65536)..<Int((block + 1) * 65536)].contains(where: { $0 != 0 }) {
                        Issue.record("\(kind): after release block \(block) holds data but is tagged zero")
                    }
                }
            }
            f.stop()
        }
    }
}
