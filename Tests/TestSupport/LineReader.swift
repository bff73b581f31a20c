import Foundation

/// Reads a child's output line by line as it comes (a pipe), for tests that wait for a line
/// a process prints ("serving ...", "connected 3") before they go on.
public final class LineReader: @unchecked Sendable {
    private let handle: FileHandle
    private var pending = Data()
    public private(set) var lines: [String] = []

    public init(_ handle: FileHandle) { self.handle = handle }

    /// Reads until `done(lines)` holds; false if the output ended first.
    public func wait(until done: ([String]) -> Bool) -> Bool {
        while !done(lines) {
            let chunk = handle.availableData
            if chunk.isEmpty { return false }
            pending.append(chunk)
            // Every complete line is kept, so a later wait finds a line that came in this chunk.
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                lines.append(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                pending.removeSubrange(pending.startIndex...newline)
            }
        }
        return true
    }
}
