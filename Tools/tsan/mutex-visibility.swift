// Why ThreadSanitizer's reports on Tessera are false positives on Linux (Swift 6.3.1): TSan
// does not see Synchronization.Mutex as synchronization, only pthread-based locks.
//
//   swiftc -sanitize=thread -O Tools/tsan/mutex-visibility.swift -o /tmp/mv
//   /tmp/mv mutex    # TSan reports a race on a counter every access of which holds a Mutex
//   /tmp/mv nslock   # the same with NSLock (pthread): no report
import Synchronization
import Foundation
final class Box: @unchecked Sendable { var n = 0; var a: [Int] = [] }
let box = Box()
let m = Mutex<Int>(0)
let lock = NSLock()
let mode = CommandLine.arguments[1]
let done = DispatchSemaphore(value: 0)
let t = (0..<2).map { _ in Thread {
    for i in 0..<10000 {
        if mode == "mutex" { m.withLock { _ in box.n += 1; box.a.append(i) } }
        else { lock.lock(); box.n += 1; box.a.append(i); lock.unlock() }
    }
    done.signal()
} }
t.forEach { $0.start() }
done.wait(); done.wait()
print(mode, "done")
