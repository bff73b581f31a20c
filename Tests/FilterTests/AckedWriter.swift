import BlockIO
import Foundation
import NBD
import TestSupport

/// A writer on its own thread that sends seeded writes through the project's `NBDClient`
/// and records each write once the filter acknowledged it, until the connection breaks
/// (the test kills the filter at a random instant).
final class AckedWriter: @unchecked Sendable {
    struct Write { var offset: UInt64; var data: [UInt8] }

    private let lock = NSLock()
    private var acked: [Write] = []
    private var inFlight: Write?
    private var stopRequested = false
    private let done = DispatchSemaphore(value: 0)
    private(set) var failure: String?

    /// Starts writing at once into `[base, base + size)`; `maxLength` bounds each write.
    init(uri: String, base: UInt64 = 0, size: UInt64, seed: UInt64, maxLength: UInt64 = 128 << 10) {
        Thread.detachNewThread { [self] in
            defer { done.signal() }
            var rng = SeededGenerator(seed: seed)
            let client: NBDClient
            do { client = try NBDClient.connect(try NBDURI(parsing: uri)) } catch {
                lock.withLock { failure = "connect: \(error)" }
                return
            }
            defer { client.close() }
            while !lock.withLock({ stopRequested }) {
                let length = UInt64.random(in: 1...maxLength, using: &rng)
                let offset = base + UInt64.random(in: 0...(size - length), using: &rng)
                let w = Write(offset: offset, data: rng.bytes(Int(length)))
                lock.withLock { inFlight = w }
                do { try client.write(offset: offset, data: w.data) } catch { return }
                lock.withLock {
                    acked.append(w)
                    inFlight = nil
                }
            }
        }
    }

    /// Waits for the writer to end (the connection broke, or `stop()`).
    func wait() { done.wait() }

    func stop() {
        lock.withLock { stopRequested = true }
        wait()
    }

    var ackedWrites: [Write] { lock.withLock { acked } }
    var unacknowledged: Write? { lock.withLock { inFlight } }

    /// Applies every acknowledged write to `model`; returns the range of the write in flight
    /// at the end (its bytes may be old or new).
    func apply(to model: inout DiskModel) -> (ByteRange?, [UInt8]) {
        for w in ackedWrites { model.write(w.data, at: w.offset) }
        guard let u = unacknowledged else { return (nil, []) }
        return (ByteRange(offset: u.offset, length: UInt64(u.data.count)), u.data)
    }
}

/// Compares a file with the model; inside `uncertain` each byte may be the model's or `new`'s.
func compare(file: [UInt8], model: [UInt8], uncertain: ByteRange?, new: [UInt8]) -> String? {
    guard file.count == model.count else { return "size \(file.count) != \(model.count)" }
    if file == model { return nil }
    for i in 0..<file.count where file[i] != model[i] {
        if let u = uncertain, UInt64(i) >= u.offset, UInt64(i) < u.end, new[i - Int(u.offset)] == file[i] { continue }
        return "byte \(i) (block \(i / 65536)) is \(file[i]), the model says \(model[i])"
    }
    return nil
}

/// Reads a whole export through the project's NBD client.
func readExport(_ uri: String) throws -> [UInt8] {
    let client = try NBDClient.connect(try NBDURI(parsing: uri))
    defer { client.close() }
    var out = [UInt8](repeating: 0, count: Int(client.exportSize))
    var at: UInt64 = 0
    while at < client.exportSize {
        let n = UInt32(min(UInt64(4 << 20), client.exportSize - at))
        try out.withUnsafeMutableBytes { try client.read(offset: at, length: n, into: UnsafeMutableRawBufferPointer(rebasing: $0[Int(at)..<Int(at) + Int(n)])) }
        at += UInt64(n)
    }
    return out
}
