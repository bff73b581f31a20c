@testable import BackupRepository
import Codecs
import Foundation
import Testing
import TestSupport

/// A failure at every named step of a backup's writes (before/after each fsync, rename and
/// directory sync of packs, index, map pages, map and snapshot) leaves a repository whose
/// committed snapshots all restore whole, and a retry succeeds.
struct FaultInjectionTests {
    /// 5000 chunks (two map pages), mostly zero, cut into small packs so the backup writes
    /// several packs, an index, pages, a map and a record.
    let base: DiskModel
    let changed: DiskModel
    /// A repository holding one backup of `base`, copied for every scenario.
    let template: TemporaryDirectory

    init() throws {
        base = DiskModel.mixed(size: 4096 * 4100, seed: 11, blockSize: 4096, zeroShare: 98)
        var d = base
        for (k, i) in [3, 17, 200, 4097].enumerated() { d.scribble(block: i, seed: 500 + UInt64(k)) }
        changed = d
        template = try TemporaryDirectory("fault-template")
        let repo = try Repository.initialize(at: template.path + "/repo", chunkSize: 4096)
        try backup(base, into: repo, packTargetSize: 32 << 10)
    }

    func freshRepository(_ dir: TemporaryDirectory) throws -> String {
        let path = dir.path + "/repo"
        try FileManager.default.copyItem(atPath: template.path + "/repo", toPath: path)
        return path
    }

    @Test func everyFaultPointLeavesAnIntactRepositoryAndARetrySucceeds() throws {
        // Dry run: which points does the second backup pass?
        let dry = try TemporaryDirectory("fault")
        let dryPath = try freshRepository(dry)
        let recorder = FaultPlan(failAt: nil)
        let recRepo = try Repository.open(store: LocalObjectStore(root: dryPath, faultHook: recorder.hook))
        try backup(changed, into: recRepo, packTargetSize: 32 << 10)
        let points = recorder.points
        let kinds = Set(points.map(\.kind))
        #expect(kinds.isSuperset(of: [.pack, .index, .mapPage, .diskMap, .snapshot]))
        #expect(Set(points.map(\.step)) == Set(FaultStep.allCases))
        #expect(points.count >= 30)
        print("fault points in one backup: \(points.count)")

        for k in points.indices {
            let dir = try TemporaryDirectory("fault")
            let path = try freshRepository(dir)
            let plan = FaultPlan(failAt: k)
            let faulty = try Repository.open(store: LocalObjectStore(root: path, faultHook: plan.hook))
            #expect(throws: (any Error).self, "fault at \(points[k]) must fail the backup") {
                try backup(changed, into: faulty, packTargetSize: 32 << 10)
            }
            // Structure intact: every committed snapshot restores whole.
            let count = try verifyAllSnapshots(at: path)
            let committedAnyway = points[k].kind == .snapshot && [.afterRename, .beforeDirectorySync, .afterDirectorySync].contains(points[k].step)
            #expect(count == (committedAnyway ? 2 : 1), "fault at \(points[k])")
            // A retry (a new process: fresh open, no fault) succeeds and restores.
            let retry = try Repository.open(at: path)
            let record = try backup(changed, into: retry, packTargetSize: 32 << 10)
            #expect(try restore(record, from: try Repository.open(at: path)) == changed.bytes)
            #expect(try verifyAllSnapshots(at: path) == count + 1)
        }
    }

    @Test func aFailedWriterRefusesToCommitAndAbandonLeavesNoSnapshot() throws {
        let dir = try TemporaryDirectory("fault")
        let path = try freshRepository(dir)
        let plan = FaultPlan(failAt: 0)
        let repo = try Repository.open(store: LocalObjectStore(root: path, faultHook: plan.hook))
        let writer = try repo.makeWriter(packTargetSize: 1)
        var g = SeededGenerator(seed: 12)
        let c = g.bytes(4096)
        // Full packs are written in the background: the failure may surface in `store` or at
        // the next call, but never lets the writer commit.
        _ = try? c.withUnsafeBytes { try writer.store(chunk: $0, id: XXH3.hash128($0)) }
        let e = #expect(throws: RepositoryError.self) { try writer.writeDiskMap(try DiskMap(diskSize: 4096, chunkSize: 4096)) }
        #expect(e?.code == .writerClosed)

        let clean = try Repository.open(at: path)
        let w2 = try clean.makeWriter()
        _ = try c.withUnsafeBytes { try w2.store(chunk: $0, id: XXH3.hash128($0)) }
        w2.abandon()
        #expect((#expect(throws: RepositoryError.self) { try w2.flush() })?.code == .writerClosed)
        #expect(try verifyAllSnapshots(at: path) == 1)
    }
}
