@testable import BackupRepository
import Codecs
import Foundation
import Testing
import TestSupport

/// Random damage to a copy of the v1 fixture (a flipped byte, a truncation, garbage):
/// reading either fails with a RepositoryError or returns exactly the right bytes.
/// Never a crash, never silently wrong data. TESSERA_LONG=1 runs 20× more rounds.
struct CorruptionFuzzTests {
    @Test func randomDamageIsDetectedNeverSilentlyWrong() throws {
        let fixture = BuiltProducts.fixtures + "/repository-v1"
        let files = filesUnder(fixture)
        let rounds = ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" ? 4000 : 200
        var g = SeededGenerator(seed: 51)
        var detected = 0
        for round in 0..<rounds {
            let dir = try TemporaryDirectory("fuzz")
            let path = dir.path + "/repo"
            try FileManager.default.copyItem(atPath: fixture, toPath: path)
            let victim = files[Int(g.next() % UInt64(files.count))]
            let url = URL(fileURLWithPath: "\(path)/\(victim)")
            var bytes = Array(try Data(contentsOf: url))
            switch g.next() % 3 {
            case 0:
                let i = Int(g.next() % UInt64(bytes.count))
                bytes[i] ^= UInt8(1 << (g.next() % 8))
            case 1:
                bytes.removeLast(1 + Int(g.next() % UInt64(bytes.count)))
            default:
                let i = Int(g.next() % UInt64(bytes.count))
                let n = min(bytes.count - i, 1 + Int(g.next() % 64))
                bytes.replaceSubrange(i..<i + n, with: g.bytes(n))
            }
            try Data(bytes).write(to: url)
            do {
                let repo = try Repository.open(at: path)
                for r in try repo.snapshots() {
                    let restored = try restore(r, from: repo)
                    #expect(r.tags.contains("disk-xxh3=\(XXH3.hash128(restored).hex)"),
                            "round \(round): damaged \(victim) and a restore returned wrong bytes without an error")
                }
                for key in try repo.store.list(.pack) { _ = try repo.verifyPack(try #require(Digest128(hex: key.name))) }
                for name in try repo.store.list(.index).map(\.name) { _ = try repo.readIndexFile(name) }
            } catch is RepositoryError {
                detected += 1
            }
        }
        // Nearly every random damage is detected by some read (a flip in JSON whitespace
        // of a record is caught by its checksum too, so all of them should be).
        #expect(detected == rounds)
    }
}
