import BlockIO
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

extension ChangeTracker {
    /// Opens (or creates) the tracker of one disk.
    ///
    /// After a clean shutdown the saved state is reused when the disk's size, inode and mtime
    /// match. After an unclean one (the in-use flag is still set) the state file is loaded and
    /// every activity log record newer than it marks its extents changed; the mtime cannot be
    /// compared then (our own writes after the last save changed it), so only size and inode
    /// are. The device number is never compared: it can change across reboots.
    /// Anything that cannot be trusted (no state, corrupt state or log header, a broken log,
    /// another disk size or granularity, another identity) starts a new generation, and
    /// `status().openReport` says why.
    /// - Parameters:
    ///   - identity: the disk file's identity now; nil skips the identity check (a disk that
    ///     is not a file the tracker can stat).
    /// - Throws: `invalidArgument` for a bad configuration or size, `io` when the state
    ///   directory cannot be written.
    public static func open(stateDirectory: String, diskSize: UInt64, identity: FileIdentity?,
                            configuration: TrackerConfiguration = TrackerConfiguration()) throws -> ChangeTracker {
        try configuration.validate()
        guard diskSize <= TrackerConfiguration.maximumDiskSize else {
            throw TrackerError(.invalidArgument, "disk size \(diskSize) is past the supported maximum of 16 TiB (\(TrackerConfiguration.maximumDiskSize) bytes)")
        }
        do { try DurableFile.makeDirectory(stateDirectory) } catch {
            throw TrackerError(.io, "cannot create the state directory \(stateDirectory): \(error)", cause: error)
        }
        let statePath = statePath(in: stateDirectory), logPath = logPath(in: stateDirectory)
        let inUsePath = inUsePath(in: stateDirectory)
        let unclean = DurableFile.exists(inUsePath)
        var report: [String] = []
        var newGenerationReason: String?
        var loaded: StateFile.Contents?

        if !DurableFile.exists(statePath) {
            newGenerationReason = unclean ? "the state file is missing after an unclean shutdown" : "first attach: no tracking state yet"
        } else {
            do {
                let bytes = try DurableFile.read(statePath)
                loaded = try StateFile.decode(bytes)
            } catch {
                newGenerationReason = "\(error)"
            }
        }

        var replayed: [UInt64] = []
        var replayExtentSize: UInt64 = 0
        var lastLogSequence: UInt64 = loaded?.logSequence ?? 0
        if let state = loaded, newGenerationReason == nil {
            newGenerationReason = mismatch(state, diskSize: diskSize, granularity: configuration.granularity,
                                           identity: identity, unclean: unclean)
            if newGenerationReason == nil {
                if unclean {
                    report.append("the last shutdown was unclean: replaying the activity log")
                    do {
                        let contents = try ActivityLog.read(logPath)
                        switch ActivityLog.replay(contents, generation: state.generation, after: state.logSequence) {
                        case .replayed(let extents, let last, let notes):
                            report.append(contentsOf: notes)
                            let limit = (diskSize + contents.extentSize - 1) / contents.extentSize
                            if let bad = extents.first(where: { $0 >= limit }) {
                                newGenerationReason = "the activity log names extent \(bad), past the end of the disk"
                            } else {
                                replayed = extents
                                replayExtentSize = contents.extentSize
                                lastLogSequence = max(lastLogSequence, last)
                                report.append("replayed \(last - state.logSequence) activity log records: \(Set(extents).count) extents of \(contents.extentSize) bytes count as changed")
                            }
                        case .broken(let why):
                            newGenerationReason = why
                        }
                    } catch {
                        newGenerationReason = "\(error) after an unclean shutdown"
                    }
                } else if DurableFile.exists(logPath) {
                    do { _ = try ActivityLog.read(logPath) } catch { newGenerationReason = "\(error)" }
                }
            }
        }

        var state: TrackerState
        if let contents = loaded, newGenerationReason == nil {
            state = TrackerState(generation: contents.generation, generationReason: contents.generationReason, map: contents.map,
                                 checkpoint: contents.checkpoint, lastCommitted: contents.lastCommitted,
                                 identity: identity ?? contents.identity, cleanOpen: !unclean, openReport: report,
                                 lastAssignedLogSequence: lastLogSequence, persistedLogSequence: contents.logSequence,
                                 encodedLogSequence: contents.logSequence)
            for extent in replayed {
                let start = extent * replayExtentSize
                state.map.markWrite(ByteRange(offset: start, length: min(start + replayExtentSize, diskSize) - start))
            }
            if let open = contents.checkpoint { report.append("checkpoint \(open.changeID) is still open: release it") }
        } else {
            let reason = newGenerationReason ?? "unknown"
            var lines = report
            let generation = UUID()
            if let old = loaded?.generation {
                lines.append("started a new generation \(generation.uuidString) because \(reason); change IDs of generation \(old.uuidString) need a full read")
            } else {
                lines.append("started a new generation \(generation.uuidString): \(reason)")
            }
            state = TrackerState(generation: generation, generationReason: reason,
                                 map: DirtyMap(diskSize: diskSize, granularity: configuration.granularity),
                                 checkpoint: nil, lastCommitted: nil, identity: identity, cleanOpen: false, openReport: lines,
                                 lastAssignedLogSequence: lastLogSequence, persistedLogSequence: lastLogSequence,
                                 encodedLogSequence: lastLogSequence)
        }
        if newGenerationReason == nil { state.openReport = report }

        // Sequences never go back: every record still in the old log is at or below the
        // sequence the state file is saved with, so none of them can be replayed later, even
        // if a crash leaves some behind while the log is emptied.
        if let old = try? ActivityLog.read(logPath), let newest = old.records.values.map(\.sequence).max(), newest > lastLogSequence {
            lastLogSequence = newest
            state.lastAssignedLogSequence = newest
            state.persistedLogSequence = newest
            state.encodedLogSequence = newest
        }

        // Order matters: the state (with replayed marks) is durable before the log that held
        // them is emptied, and "in use" is durable before any mark is accepted. "In use" comes
        // last, so a start that fails on the way leaves a clean shutdown clean.
        let bytes = StateFile.encode(generation: state.generation, generationReason: state.generationReason, map: state.map,
                                     checkpoint: state.checkpoint, lastCommitted: state.lastCommitted,
                                     identity: state.identity, logSequence: lastLogSequence)
        let log = try prepareFiles(stateDirectory: stateDirectory, state: bytes, configuration: configuration,
                                   generation: state.generation, unclean: unclean)
        return ChangeTracker(stateDirectory: stateDirectory, configuration: configuration, state: state, log: log)
    }

    /// Writes the state file, empties the activity log and sets "in use", in that order.
    private static func prepareFiles(stateDirectory: String, state: [UInt8], configuration: TrackerConfiguration,
                                     generation: UUID, unclean: Bool) throws -> ActivityLog {
        do {
            try DurableFile.write(state, to: statePath(in: stateDirectory))
            let log = try ActivityLog(prepare: logPath(in: stateDirectory), slotCount: configuration.activityLogSlots,
                                      extentSize: configuration.activityLogExtentSize, generation: generation)
            let inUse = Array("in use by process \(getpid())\n".utf8)
            if unclean {
                // Already set by the run that crashed; the new text only helps a reader.
                try? DurableFile.write(inUse, to: inUsePath(in: stateDirectory))
            } else {
                try DurableFile.write(inUse, to: inUsePath(in: stateDirectory))
            }
            return log
        } catch {
            throw TrackerError(.io, "cannot prepare the state directory \(stateDirectory): \(error); nothing was lost, the tracking state is as it was", cause: error)
        }
    }

    /// Why a loaded state cannot be reused for this disk, or nil when it can.
    private static func mismatch(_ state: StateFile.Contents, diskSize: UInt64, granularity: UInt64,
                                 identity: FileIdentity?, unclean: Bool) -> String? {
        if state.map.diskSize != diskSize {
            return "the disk size changed from \(state.map.diskSize) to \(diskSize) bytes while the tracker was not attached"
        }
        if state.map.granularity != granularity {
            return "the granularity changed from \(state.map.granularity) to \(granularity) bytes"
        }
        guard let identity, let saved = state.identity else { return nil }
        if saved.inode != identity.inode || saved.size != identity.size {
            return "the disk file changed behind the tracker's back (inode \(saved.inode) → \(identity.inode), size \(saved.size) → \(identity.size))"
        }
        if !unclean && saved.modificationNanoseconds != identity.modificationNanoseconds {
            return "the disk file was modified while the tracker was not attached (mtime \(saved.modificationNanoseconds) → \(identity.modificationNanoseconds) ns)"
        }
        return nil
    }
}
