import Foundation
import FuzzTargets
import Testing
import TestSupport

/// Replays every input the fuzzer found (Fixtures/fuzz/<target>/*, kept by Tools/fuzz) through
/// the same target function, with no fuzzer build: each must be parsed or refused cleanly.
/// A trap here crashes the test run, which is the failure this test exists to show.
struct FuzzRegressionTests {
    static let root = BuiltProducts.fixtures + "/fuzz"

    static func inputs() -> [(target: String, file: String)] {
        let fm = FileManager.default
        let dirs = ((try? fm.contentsOfDirectory(atPath: root)) ?? []).filter { !$0.hasPrefix(".") && !$0.hasSuffix(".md") }.sorted()
        return dirs.flatMap { dir in
            ((try? fm.contentsOfDirectory(atPath: "\(root)/\(dir)")) ?? []).filter { !$0.hasPrefix(".") }.sorted()
                .map { (dir, "\(root)/\(dir)/\($0)") }
        }
    }

    @Test func everyRegressionFolderNamesATarget() throws {
        let dirs = ((try? FileManager.default.contentsOfDirectory(atPath: Self.root)) ?? [])
            .filter { !$0.hasPrefix(".") && !$0.hasSuffix(".md") }
        for dir in dirs {
            #expect(fuzzTargets[dir] != nil, "Fixtures/fuzz/\(dir) is not a fuzz target (known: \(fuzzTargets.keys.sorted()))")
        }
    }

    @Test func regressionInputsParseOrFailCleanly() throws {
        for (target, file) in Self.inputs() {
            let run = try #require(fuzzTargets[target])
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
            let start = ContinuousClock.now
            run(bytes)
            #expect(ContinuousClock.now - start < .seconds(10), "\(file) took \(ContinuousClock.now - start) (a hang?)")
        }
    }
}
