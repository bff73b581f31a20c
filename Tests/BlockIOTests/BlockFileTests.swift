import BlockIO
import Testing
import TestSupport

struct BlockFileTests {
    @Test func writeReadAndZeroTail() throws {
        let dir = try TemporaryDirectory("blockfile")
        let file = try BlockFile(path: dir.file("disk.raw"), mode: .createReadWrite)
        try file.write([1, 2, 3, 4], at: 10)
        #expect(try file.read(count: 4, at: 10) == [1, 2, 3, 4])
        #expect(try file.size() == 14)
        // Past the end reads as zeroes: a flat file may be shorter than its disk.
        #expect(try file.read(count: 6, at: 12) == [3, 4, 0, 0, 0, 0])
    }

    @Test func holesAreReportedAndPunched() throws {
        let dir = try TemporaryDirectory("holes")
        let file = try BlockFile(path: dir.file("sparse.raw"), mode: .createReadWrite)
        try file.truncate(to: 16 << 20)
        try file.write([UInt8](repeating: 9, count: 1 << 20), at: 4 << 20)
        let data = try file.dataRanges(in: ByteRange(offset: 0, length: 16 << 20))
        #expect(data.totalLength >= 1 << 20)
        #expect(data.allSatisfy { $0.overlaps(ByteRange(offset: 4 << 20, length: 1 << 20)) })
        try file.punchHole(ByteRange(offset: 4 << 20, length: 1 << 20))
        #expect(try file.read(count: 16, at: 4 << 20) == [UInt8](repeating: 0, count: 16))
    }

    @Test func durableWriteReplacesAtomically() throws {
        let dir = try TemporaryDirectory("durable")
        let path = dir.file("state")
        try DurableFile.write([1, 2, 3], to: path)
        try DurableFile.write([4, 5], to: path)
        #expect(try DurableFile.read(path) == [4, 5])
    }

    @Test func missingFileNamesThePath() {
        do {
            _ = try BlockFile(path: "/nonexistent/disk.raw", mode: .readOnly)
            Issue.record("opening a missing file succeeded")
        } catch let error as BlockIOError {
            #expect(error.code == .notFound)
            #expect(error.description.contains("/nonexistent/disk.raw"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}
