import ArgumentParser
import BackupRepository
import BlockIO
import Codecs
import Foundation
import Workers

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Prove the repository is intact; say which snapshots and disk ranges any damage hurts.",
        discussion: """
            Always: the config, every snapshot record, disk map and map page, and that every chunk a \
            map names is indexed, its pack exists and the pack's trailer lists it. With --read-data, \
            every pack is read and every chunk decompressed and re-hashed; --read-data-subset N% or \
            K/M reads a deterministic part (M runs of K=1..M cover everything). A damaged or lost \
            chunk copy is set aside, so the next backup of an affected disk stores it again \
            (not without a lock, with --no-lock or on a read-only repository: then check writes nothing). \
            --dry-run prints what would be read (snapshots, packs, bytes) and stops. Ctrl-C stops \
            a check at the next pack, with nothing changed.
            Exit codes: 0 clean, 1 damage found (or failed), 10 no repository, 11 locked, 130 cancelled (SIGINT), 143 (SIGTERM).
            """)
    @OptionGroup var repository: RepositoryOptions
    @Flag(help: "Read every pack and re-hash every chunk.") var readData = false
    @Option(help: "Read part of the packs: N% or K/M (the K-th of M disjoint slices by pack ID).") var readDataSubset: String?
    @Flag(help: "Report damaged chunks but do not set them aside.") var noSetAside = false
    @Flag(help: "Print what the check would read and stop: nothing is read or changed.") var dryRun = false
    @OptionGroup var lockOptions: ReadLockOptions
    @Flag(help: "Print JSON lines: one per finding, then {\"type\":\"summary\", ...}.") var json = false

    func validate() throws {
        if let s = readDataSubset, DataSelection(subset: s) == nil {
            throw ValidationError("--read-data-subset takes N% (0 < N <= 100) or K/M (1 <= K <= M), e.g. 10% or 2/7")
        }
        if readData && readDataSubset != nil { throw ValidationError("give --read-data or --read-data-subset, not both") }
    }

    struct FindingLine: Encodable {
        var type = "finding"
        var finding: CheckFinding
        func encode(to encoder: any Encoder) throws {
            try finding.encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(type, forKey: Key(stringValue: "type")!)
        }
    }

    struct SummaryLine: Encodable {
        var type = "summary"
        var clean: Bool
        var summary: CheckSummary
        func encode(to encoder: any Encoder) throws {
            try summary.encode(to: encoder)
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(type, forKey: Key(stringValue: "type")!)
            try c.encode(clean, forKey: Key(stringValue: "clean")!)
        }
    }

    /// What a run ends with: a plan (`--dry-run`) or a report.
    enum Outcome {
        case plan(CheckPlan)
        case report(RepositoryChecker.Report)
    }

    func run() throws {
        var options = CheckOptions(readData: readData ? .all : readDataSubset.flatMap { DataSelection(subset: $0) } ?? .none,
                                   setAside: !noSetAside)
        options.workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
        let bar = CheckProgressLine(json: json || dryRun)
        let signals = JobSignals()
        let logger = CommandLogHandler.logger("tessera.check", json: json)
        let outcome = try reportingErrors(json: json, cancelled: { "check cancelled by \($0.reason); nothing was changed" }) { () -> Outcome in
            // A shared lock: check runs beside backups, never beside prune (which deletes).
            let lock: MaintenanceLock?
            do {
                lock = try MaintenanceLock(path: repository.path, reading: lockOptions.locking, logger: logger)
            } catch let e as RepositoryError where e.object == "config" && (e.code == .damaged || e.code == .notARepository) {
                lock = nil // the checker reports the config itself
            }
            defer { lock?.release() }
            if let lock {
                var options = options
                // Without a lock, check writes nothing (set-aside records included).
                if lock.lock == nil { options.setAside = false }
                if dryRun { return .plan(try RepositoryChecker.plan(lock.repository, options: options)) }
                return .report(try RepositoryChecker.check(lock.repository, options: options, cancellation: signals.cancellation,
                                                           progress: { bar.update($0) }))
            }
            // No readable config: the report says so (a dry run has nothing else to plan).
            return .report(try RepositoryChecker.check(path: repository.path, options: options, cancellation: signals.cancellation,
                                                       progress: { bar.update($0) }))
        }
        bar.finish()
        switch outcome {
        case .plan(let plan): printPlan(plan)
        case .report(let report): try printReport(report)
        }
    }

    struct PlanLine: Encodable {
        var type = "plan"
        var snapshots: Int, indexFiles: Int, packs: Int, packsMissing: Int, packsRead: Int, bytesToRead: UInt64
        var packsToRead: [String]
    }

    private func printPlan(_ plan: CheckPlan) {
        let packsRead = plan.packsToRead
        if json {
            printJSONLine(PlanLine(snapshots: plan.snapshots.count, indexFiles: plan.indexFiles.count, packs: plan.listedPacks,
                                   packsMissing: plan.missingPacks.count, packsRead: packsRead.count, bytesToRead: plan.bytesToRead,
                                   packsToRead: packsRead.map(\.hex)))
            return
        }
        print("check would read \(Output.count(plan.snapshots.count, "snapshot record")) with their disk maps and map pages, \(Output.count(plan.indexFiles.count, "index file")), and the trailers of \(Output.count(plan.listedPacks, "pack"))")
        if plan.options.readData != .none {
            let how = readData ? "--read-data" : "--read-data-subset \(readDataSubset ?? "")"
            print("  and read \(Output.count(packsRead.count, "pack")) whole (\(Output.bytes(plan.bytesToRead))), every chunk re-hashed (\(how))")
        }
        if !plan.missingPacks.isEmpty {
            print("  \(Output.count(plan.missingPacks.count, "pack")) the index names \(plan.missingPacks.count == 1 ? "is" : "are") missing: \(plan.missingPacks.prefix(4).map { $0.hex.prefix(12) + "…" }.joined(separator: ", "))")
        }
        print("dry run: nothing was read or changed")
    }

    private func printReport(_ report: RepositoryChecker.Report) throws {
        if json {
            for f in report.findings { printJSONLine(FindingLine(finding: f)) }
            printJSONLine(SummaryLine(clean: report.isClean, summary: report.summary))
        } else {
            for f in report.findings { print(Self.describe(f)) }
            let s = report.summary
            print("checked \(Output.count(s.snapshots, "snapshot")), \(Output.count(s.diskMaps, "disk map")), \(Output.count(s.mapPages, "map page")), \(Output.count(s.chunksReferenced, "chunk")) referenced, \(Output.count(s.packs, "pack"))")
            if s.packsRead > 0 {
                print("read \(Output.count(s.packsRead, "pack")), \(Output.count(s.chunksRead, "chunk")), \(Output.bytes(s.bytesRead)) in \(String(format: "%.2f", s.seconds))s (\(Output.bytes(UInt64(Double(s.bytesRead) / max(s.seconds, 0.001))))/s)")
            }
            if s.unreferencedPacks + s.unreferencedDiskMaps + s.unreferencedMapPages > 0 {
                print("unreferenced (prune removes them): \(Output.count(s.unreferencedPacks, "pack")), \(Output.count(s.unreferencedDiskMaps, "disk map")), \(Output.count(s.unreferencedMapPages, "map page"))")
            }
            if s.setAsideNow > 0 { print("set aside \(Output.count(s.setAsideNow, "chunk copy", "chunk copies")): the next backup of the affected disks stores them again") }
            print(report.isClean ? "no damage found" : "\(Output.count(report.findings.count, "problem")) found")
        }
        if !report.isClean { throw ExitCode(ExitCodes.failed) }
    }

    static func describe(_ f: CheckFinding) -> String {
        var lines = ["\(f.lost ? "DAMAGED" : "WARNING") \(f.object): \(f.problem)"]
        for d in f.damage {
            let ranges = d.ranges.isEmpty ? "the whole snapshot" : d.ranges.prefix(8).map(\.description).joined(separator: " ")
                + (d.ranges.count > 8 ? " … (\(Output.count(d.ranges.count, "range")), \(Output.bytes(d.ranges.totalLength)))" : "")
            lines.append("  snapshot \(d.snapshot.prefix(12)) (disk \(d.disk)): \(ranges)")
        }
        return lines.joined(separator: "\n")
    }
}

/// One JSON line with snake_case keys, like the other commands' output (`chunks_new`).
func printJSONLine(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    if let data = try? encoder.encode(value), let line = String(data: data, encoding: .utf8) { print(line) }
}

/// A dynamic JSON key, to add `type` to an encoded value.
struct Key: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// Check progress on stderr when it is a terminal.
final class CheckProgressLine: Sendable {
    private let enabled: Bool
    private let started = Date()

    init(json: Bool) { enabled = !json && isatty(STDERR_FILENO) != 0 }

    func update(_ p: CheckProgress) {
        guard enabled else { return }
        let seconds = Date().timeIntervalSince(started)
        let rate = seconds > 0 ? Double(p.bytesDone) / seconds : 0
        let line = String(format: "\rcheck: %d/%d packs, %@ / %@ read, %@/s\u{1B}[K", p.packsDone, p.packsTotal,
                          Output.bytes(p.bytesDone), Output.bytes(p.bytesTotal), Output.bytes(UInt64(rate)))
        FileHandle.standardError.write(Data(line.utf8))
    }

    func finish() {
        if enabled { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}
