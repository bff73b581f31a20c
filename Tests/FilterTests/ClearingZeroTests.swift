import BlockIO
import ChangeTracking
@testable import Filter
import Testing
import TestSupport

/// `FilterService.clearingZero`, which keeps QUERY_CHANGES' zero flag true to the frozen base
/// while a checkpoint is open, against a per-block model.
struct ClearingZeroTests {
    /// Sorted, non-overlapping block runs as extents (granularity 1 for the model).
    static func runs(_ kinds: [UInt8]) -> [ChangedExtent] {
        var out: [ChangedExtent] = []
        var b = 0
        while b < kinds.count {
            guard kinds[b] != 0 else { b += 1; continue }
            let start = b
            while b < kinds.count && kinds[b] == kinds[start] { b += 1 }
            out.append(ChangedExtent(range: ByteRange(offset: UInt64(start), length: UInt64(b - start)), readsAsZero: kinds[start] == 2))
        }
        return out
    }

    @Test(arguments: 0..<200)
    func matchesThePerBlockModel(seed: Int) {
        var rng = SeededGenerator(seed: UInt64(seed))
        let count = Int.random(in: 1...200, using: &rng)
        let kinds = (0..<count).map { _ in UInt8.random(in: 0...2, using: &rng) } // 0 clean, 1 data, 2 zero
        let held = (0..<count).map { _ in Bool.random(using: &rng) && Bool.random(using: &rng) }
        let out = FilterService.clearingZero(Self.runs(kinds), where: Self.runs(held.map { $0 ? 1 : 0 }))
        var got = [UInt8](repeating: 0, count: count)
        var last: ChangedExtent?
        for e in out {
            if let last { #expect(last.range.end < e.range.offset || last.readsAsZero != e.readsAsZero, "seed \(seed): not coalesced") }
            for b in e.range.offset..<e.range.end { got[Int(b)] = e.readsAsZero ? 2 : 1 }
            last = e
        }
        let expected = kinds.enumerated().map { b, k in k == 2 && held[b] ? 1 : k }
        #expect(got == expected, "seed \(seed)")
    }
}
