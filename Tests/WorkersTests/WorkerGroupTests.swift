import Foundation
import Synchronization
import Testing
import Workers

struct WorkerGroupTests {
    struct Boom: Error, Equatable { var item: Int }

    @Test(arguments: [1, 2, 7])
    func everyItemRunsExactlyOnce(workers: Int) throws {
        let seen = Mutex<[Int]>([])
        try WorkerGroup.forEach(1000, workers: workers) { item in seen.withLock { $0.append(item) } }
        #expect(seen.withLock { $0 }.sorted() == Array(0..<1000))
    }

    @Test func theFirstErrorWinsAndNoNewItemStartsAfterIt() throws {
        let started = Atomic<Int>(0)
        #expect(throws: Boom(item: 10)) {
            try WorkerGroup.forEach(10_000, workers: 4) { item in
                started.add(1, ordering: .relaxed)
                if item == 10 { throw Boom(item: 10) }
                usleep(100)
            }
        }
        // Each worker finishes at most the item it had begun.
        #expect(started.load(ordering: .relaxed) < 10_000)
    }

    @Test func aCancelledRunStopsAndSaysWhy() throws {
        let cancellation = Cancellation()
        let done = Atomic<Int>(0)
        do {
            try WorkerGroup.forEach(100_000, workers: 3, cancellation: cancellation) { item in
                if item == 50 { cancellation.cancel(reason: "SIGINT") }
                done.add(1, ordering: .relaxed)
            }
            Issue.record("a cancelled run returned normally")
        } catch let c as Cancelled {
            #expect(c.reason == "SIGINT")
        }
        #expect(done.load(ordering: .relaxed) < 100_000)
        // The first reason sticks.
        cancellation.cancel(reason: "SIGTERM")
        #expect(cancellation.reason == "SIGINT")
    }

    @Test func aTickerTicksUntilStopped() throws {
        let ticks = Atomic<Int>(0)
        let third = DispatchSemaphore(value: 0)
        let ticker = Ticker(every: 0.01, name: "test") {
            if ticks.add(1, ordering: .relaxed).newValue == 3 { third.signal() }
        }
        #expect(third.wait(timeout: .now() + 60) == .success, "the ticker did not tick 3 times in 60 s")
        ticker.stop()
        // stop() does not wait for a tick under way: give one time to end, then none may follow.
        usleep(50_000)
        let after = ticks.load(ordering: .relaxed)
        usleep(50_000)
        #expect(ticks.load(ordering: .relaxed) == after, "the ticker ticked after stop()")
    }
}
