@testable import CulvertCore
import Testing

@Suite struct StarvedStreamQueueTests {
    /// Streams come out in the order they started waiting; one already waiting keeps its place.
    @Test func streamsAreServedFirstComeFirstServed() {
        var queue = StarvedStreamQueue()
        for id: StreamID in [5, 3, 9, 3] { queue.append(id) }
        #expect(queue.count == 3)
        #expect([queue.popFirst(), queue.popFirst(), queue.popFirst(), queue.popFirst()] == [5, 3, 9, nil])
        #expect(queue.isEmpty)
    }

    /// A stream removed from the middle is skipped; removed and queued again, it waits at the back.
    @Test func removedStreamsLeaveTheOrderAndRejoinAtTheBack() {
        var queue = StarvedStreamQueue()
        for id: StreamID in [1, 2, 3] { queue.append(id) }
        queue.remove(2)
        #expect(!queue.contains(2) && queue.contains(1))
        queue.remove(1)
        queue.append(1)
        #expect([queue.popFirst(), queue.popFirst(), queue.popFirst()] == [3, 1, nil])
    }

    /// Streams that starve and are fed over and over keep the queue's order and membership exact (the stale
    /// entries removal leaves behind are compacted away).
    @Test func churnKeepsOrderAndMembershipExact() {
        var queue = StarvedStreamQueue()
        for id in 0..<1000 as Range<StreamID> { queue.append(id) }
        for round in 0..<20 {
            for id in stride(from: StreamID(round % 2), to: 1000, by: 2) { queue.remove(id) }
            for id in stride(from: StreamID(round % 2), to: 1000, by: 2) { queue.append(id) }
        }
        #expect(queue.count == 1000)
        var served: [StreamID] = []
        while let id = queue.popFirst() { served.append(id) }
        // The last round moved the odd ids to the back.
        #expect(served == Array(stride(from: 0, to: 1000, by: 2)) + Array(stride(from: 1, to: 1000, by: 2)))
    }
}
