import Filter
import TrackerControl
import Foundation
import Testing
import TestSupport

/// Promise 1: real NBD clients write and read through the filter, and the flat file holds
/// exactly what they wrote.
@Suite(.serialized)
struct InteropTests {
    static let size: UInt64 = 8 << 20

    /// Seeded scattered writes of patterns (unaligned), as qemu-io commands, applied to the model.
    static func patternWrites(_ rng: inout SeededGenerator, count: Int, model: inout DiskModel) -> [String] {
        let size = model.size
        var commands: [String] = []
        for _ in 0..<count {
            let length = UInt64.random(in: 1...(200 << 10), using: &rng)
            let offset = UInt64.random(in: 0...(size - length), using: &rng)
            let pattern = UInt8.random(in: 1...255, using: &rng)
            commands.append("write -P 0x\(String(pattern, radix: 16)) \(offset) \(length)")
            model.fill(pattern, at: offset, length: length)
        }
        return commands
    }

    static func qemuIO(_ uri: String, _ commands: [String]) throws {
        var args = ["-f", "raw", "-d", "unmap"]
        for c in commands { args += ["-c", c] }
        let out = try run("qemu-io", args + [uri])
        // qemu-io reports a failed command on stdout and still exits 0 for some of them.
        if out.contains("Pattern verification failed") || out.contains("failed:") {
            throw CommandError(description: "qemu-io reported a failure: \(out)")
        }
    }

    @Test(.enabled(if: ExternalTool.available("qemu-io")))
    func qemuIOWritesLandInTheFlatFile() throws {
        let dir = try TemporaryDirectory("filter-io")
        let diskPath = dir.file("disk.raw")
        var model = try DiskModel.create(at: diskPath, size: Self.size, seed: 11)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        var rng = SeededGenerator(seed: 1)
        try withFilter(filter) { f in
            let writes = Self.patternWrites(&rng, count: 40, model: &model)
            // Also a write-zeroes and a trim, which read back as zeroes.
            let zeroes = ["write -z 1048576 200000", "discard 3145728 131072"]
            model.zero(at: 1_048_576, length: 200_000)
            model.zero(at: 3_145_728, length: 131_072)
            try Self.qemuIO(f.uri, writes + zeroes)
            // Read every write back through the filter: the newest pattern wins per byte, so
            // check the model's bytes in 64 KiB pieces (read -P needs one pattern: use the
            // pieces that are uniform, and compare the rest through nbdcopy below).
            var reads: [String] = []
            var at: UInt64 = 0
            while at < Self.size {
                let piece = model.bytes[Int(at)..<Int(at + 65536)]
                if let first = piece.first, piece.allSatisfy({ $0 == first }) {
                    reads.append("read -P 0x\(String(first, radix: 16)) \(at) 65536")
                }
                at += 65536
            }
            #expect(reads.count > 10, "too few uniform pieces to read back with read -P")
            try Self.qemuIO(f.uri, reads)
            f.stop()
        }
        let file = try fileBytes(diskPath)
        expectSame(file, model.bytes, "the flat file differs from the model of the writes")
    }

    @Test(.enabled(if: ExternalTool.available("qemu-img", "nbdcopy", "nbdsh")))
    func qemuImgNbdcopyAndNbdshCopyInAndOut() throws {
        let dir = try TemporaryDirectory("filter-copy")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: Self.size)
        let source = dir.file("source.raw")
        let sourceModel = try DiskModel.create(at: source, size: Self.size, seed: 21)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            // qemu-img convert in, then out.
            try run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, f.uri])
            let out1 = dir.file("out1.raw")
            try run("qemu-img", ["convert", "-f", "raw", "-O", "raw", f.uri, out1])
            let copied = try fileBytes(out1)
            expectSame(copied, sourceModel.bytes, "qemu-img convert out differs")

            // nbdcopy in (another image) and out.
            let source2 = dir.file("source2.raw")
            let model2 = try DiskModel.create(at: source2, size: Self.size, seed: 22)
            try run("nbdcopy", [source2, f.uri])
            let out2 = dir.file("out2.raw")
            try run("nbdcopy", [f.uri, out2])
            let copied2 = try fileBytes(out2)
            expectSame(copied2, model2.bytes, "nbdcopy out differs")

            // nbdsh: a write and a read back with the python binding.
            let script = """
                h.pwrite(b"tessera!" * 1024, 65536 * 3 + 17)
                h.flush()
                assert h.pread(8192, 65536 * 3 + 17) == b"tessera!" * 1024
                print("ok")
                """
            // nbdsh runs `python3` from PATH; the nbd module belongs to the system's python.
            let path = "/usr/bin:/bin:" + (ProcessInfo.processInfo.environment["PATH"] ?? "")
            let out = try run("nbdsh", ["-u", f.uri, "-c", script], environment: ["PATH": path])
            #expect(out.contains("ok"))
            f.stop()
        }
        var expected = try DiskModel(contentsOf: dir.file("source2.raw"))
        expected.write(Array(String(repeating: "tessera!", count: 1024).utf8), at: 65536 * 3 + 17)
        let file = try fileBytes(diskPath)
        expectSame(file, expected.bytes, "the flat file differs")
    }

    /// Parses `nbdinfo --list --json`: export name → its meta contexts.
    static func listExports(_ uri: String) throws -> [String: [String]] {
        let out = try run("nbdinfo", ["--list", "--json", uri])
        guard let root = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any],
              let exports = root["exports"] as? [[String: Any]] else {
            throw CommandError(description: "nbdinfo --list --json printed no exports: \(out)")
        }
        var result: [String: [String]] = [:]
        for e in exports {
            guard let name = e["export-name"] as? String else { continue }
            result[name] = e["contexts"] as? [String] ?? []
        }
        return result
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func nbdinfoListsExportsAndContexts() throws {
        let dir = try TemporaryDirectory("filter-list")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: Self.size)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let before = try Self.listExports(f.uri)
            #expect(Set(before.keys) == ["d0"], "exports without a checkpoint: \(before)")
            #expect(Set(before["d0"] ?? []).isSuperset(of: ["base:allocation", "qemu:dirty-bitmap:active"]), "\(before)")
            _ = try f.client().checkpoint(disk: "d0")
            let during = try Self.listExports(f.uri)
            #expect(Set(during.keys) == ["d0", "d0@checkpoint"], "exports with a checkpoint: \(during)")
            #expect(Set(during["d0@checkpoint"] ?? []).isSuperset(of: ["base:allocation", "qemu:dirty-bitmap:checkpoint"]), "\(during)")
            _ = try f.client().release(disk: "d0", commit: true)
            let after = try Self.listExports(f.uri)
            #expect(Set(after.keys) == ["d0"], "exports after release: \(after)")
            f.stop()
        }
    }
}
