import BlockIO
import ChangeTracking
import Foundation
import Testing
import TrackerControl

/// Small state directories: tiny log rings keep the tests fast and exercise ring-full saves.
let smallConfiguration = TrackerConfiguration(granularity: 65536, activityLogExtentSize: 1 << 20, activityLogSlots: 64)

/// Every changed block (by index) with its reads-as-zero flag, collected page by page.
func changedBlocks(_ pageSource: (ByteRange) throws -> ChangePage, diskSize: UInt64, granularity: UInt64) throws -> [Int: Bool] {
    var out: [Int: Bool] = [:]
    var at: UInt64 = 0
    var lastEnd: UInt64 = 0
    while at < diskSize {
        let page = try pageSource(ByteRange(offset: at, length: diskSize - at))
        #expect(page.processed.offset == at, "a page starts where it was asked to")
        #expect(page.processed.end > at, "a page makes progress")
        for extent in page.extents {
            #expect(extent.range.offset % granularity == 0, "extent \(extent) is aligned")
            #expect(extent.range.end % granularity == 0 || extent.range.end == diskSize, "extent \(extent) ends aligned or at the disk's end")
            #expect(extent.range.end <= diskSize)
            #expect(extent.range.offset >= lastEnd, "extents are sorted and disjoint")
            #expect(page.processed.contains(extent.range), "extent \(extent) is inside the processed range")
            lastEnd = extent.range.end
            for b in Int(extent.range.offset / granularity)..<Int((extent.range.end + granularity - 1) / granularity) {
                #expect(out[b] == nil, "block \(b) reported once")
                out[b] = extent.readsAsZero
            }
        }
        for (a, b) in zip(page.extents, page.extents.dropFirst()) {
            #expect(!(a.range.end == b.range.offset && a.readsAsZero == b.readsAsZero), "touching extents \(a) \(b) with the same flag are coalesced")
        }
        at = page.processed.end
    }
    return out
}

func changedBlocks(_ tracker: ChangeTracker, since id: ChangeID, limit: Int = ChangePage.defaultExtentLimit) throws -> [Int: Bool] {
    let status = tracker.status()
    return try changedBlocks({ try tracker.changes(since: id, in: $0, limit: limit) }, diskSize: status.diskSize, granularity: status.granularity)
}

func changedBlocks(_ tracker: ChangeTracker, view: ChangeView, limit: Int = ChangePage.defaultExtentLimit) throws -> [Int: Bool] {
    let status = tracker.status()
    return try changedBlocks({ try tracker.changes(view: view, in: $0, limit: limit) }, diskSize: status.diskSize, granularity: status.granularity)
}

/// The blocks a byte range touches (rounded outward).
func blocks(of range: ByteRange, granularity: UInt64) -> Range<Int> {
    range.isEmpty ? 0..<0 : Int(range.offset / granularity)..<Int((range.end - 1) / granularity) + 1
}

/// Expects `body` to throw a `TrackerError` with `code`.
func expectTrackerError<T>(_ code: TrackerError.Code, _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation,
                           _ body: () throws -> T) {
    do {
        _ = try body()
        Issue.record("expected TrackerError.\(code), got success. \(comment.map { "\($0)" } ?? "")", sourceLocation: sourceLocation)
    } catch let error as TrackerError {
        #expect(error.code == code, "\(error.message)", sourceLocation: sourceLocation)
        #expect(!error.message.isEmpty, sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected TrackerError.\(code), got \(error)", sourceLocation: sourceLocation)
    }
}
