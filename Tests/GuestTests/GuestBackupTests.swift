import Foundation
import Testing
import TestSupport

/// A real guest (Linux, ext4, qemu-ga, Tools/guest) writes on a disk the filter serves while
/// `tessera backup` and `tessera run` take crash-consistent, quiesced and paused snapshots and the filter is
/// SIGKILLed and restarted under it; every restore must be a consistent file system holding
/// the guest's last manifest from before its checkpoint.
///
/// Runs only with TESSERA_VM_TESTS=1 (`Tools/test --vm`, which also builds the image); then a
/// missing qemu or image fails the test.
@Suite(.serialized, .enabled(if: GuestImage.testsEnabled))
struct GuestBackupTests {
    @Test(.timeLimit(.minutes(30)))
    func backupsOfAWritingGuestAcrossFilterKillsRestoreConsistent() throws {
        var workload = GuestWorkload()
        workload.seed = Int.random(in: 1...32767)
        workload.operationsPerEpoch = 40
        workload.filesPerEpoch = 12
        workload.largestFileKiB = 2048
        let run = try GuestScenario(workload: workload)
        run.log("workload: \(workload.kernelArguments.joined(separator: " "))")

        try run.step("boot to TESSERA-READY") { try run.vm.waitUntilReady() }
        try run.nextManifest()

        try run.backup(.crashConsistent, note: "first: full")
        try run.nextManifest()
        try run.backup(.crashConsistent)
        try run.quiescedBackup()
        try run.quiescedCheckpointBackup()
        try run.nightlyRun(note: "tessera run: freeze, group checkpoint, thaw, read")

        try run.killFilter(outage: 1)
        try run.nextManifest()
        try run.nightlyRun(note: "tessera run after a SIGKILL")
        try run.nightlyRun(note: "tessera run, quiesce off", quiesced: false)
        try run.backup(.crashConsistent, note: "after a SIGKILL")
        try run.nextManifest()
        try run.quiescedBackup()

        // The first backup after a SIGKILL, compared byte for byte: no mark lost in the kill.
        try run.killFilter(outage: 3)
        try run.pausedComparison(note: "first after a SIGKILL")
        try run.nextManifest()
        try run.quiescedCheckpointBackup()

        // A third SIGKILL while a checkpoint is open and the guest writes into the overlay: the
        // checkpoint is reopened on restart, still reads as frozen, and the merge loses nothing.
        try run.quiescedCheckpointBackup(killingTheFilter: true)
        try run.nextManifest()
        try run.backup(.crashConsistent, note: "after a kill with a checkpoint open")
        try run.pausedComparison(note: "after that overlay merged")
        try run.nextManifest()
        try run.backup(.crashConsistent)

        let last = try run.step("guest shut down (guest-shutdown)") { try run.vm.shutdown() }
        try run.backup(.shutDown)
        try run.step("filter stopped (SIGTERM)") { try run.filter.stop() }

        try run.verifyAll(lastManifest: last)
        run.log("done: \(run.snapshots.count) snapshots, \(run.filter.starts - 1) filter kills, \(last) manifests\n" + run.table)
        #expect(run.snapshots.allSatisfy { $0.check?.passed == true })
    }
}
