import Foundation

/// Entry points for the fuzz targets (Tools/fuzz-targets, built only with TESSERA_FUZZ=1) and
/// the regression replay test: the tracker's on-disk formats decoded from untrusted bytes, as
/// `ChangeTracker.open` reads them. `package`, not public.
package enum TrackerFormatFuzzing {
    package static func stateFile(_ bytes: [UInt8]) {
        _ = try? StateFile.decode(bytes)
    }

    /// Decodes the log, then replays it against the generation of its first valid record.
    package static func activityLog(_ bytes: [UInt8]) {
        guard let contents = try? ActivityLog.decode(bytes) else { return }
        let generation = contents.records.values.first?.generation ?? UUID()
        _ = ActivityLog.replay(contents, generation: generation, after: 0)
    }
}
