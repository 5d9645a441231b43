import NIOCore

/// The streams waiting for receive memory, first come first served, with constant-time membership, insertion and
/// removal.
///
/// A plain array made every event of a session with thousands of starved streams (idle ones opened beyond what the
/// session's memory covers) cost a scan of all of them: with 9,000 idle streams that scan was a fifth of both
/// processes' CPU and doubled a 1-byte round trip. Removal is lazy: a removed stream's entry stays in the order
/// until it reaches the front, where a ticket that no longer matches marks it stale.
struct StarvedStreamQueue: Sendable {
    private var order = CircularBuffer<(id: StreamID, ticket: UInt64)>()
    private var tickets: [StreamID: UInt64] = [:]
    private var nextTicket: UInt64 = 0

    var isEmpty: Bool { self.tickets.isEmpty }
    var count: Int { self.tickets.count }

    func contains(_ id: StreamID) -> Bool { self.tickets[id] != nil }

    /// Queues `id` at the back unless it is already waiting.
    mutating func append(_ id: StreamID) {
        guard self.tickets[id] == nil else { return }
        self.nextTicket += 1
        self.tickets[id] = self.nextTicket
        self.order.append((id, self.nextTicket))
    }

    /// Takes `id` out of the queue, wherever it stands.
    mutating func remove(_ id: StreamID) {
        guard self.tickets.removeValue(forKey: id) != nil else { return }
        // Stale entries are dropped as they reach the front; compact when they outnumber the live ones, so that
        // streams starved and fed over and over do not grow the order without bound.
        if self.order.count > 2 * self.tickets.count + 64 {
            self.order = CircularBuffer(self.order.filter { self.tickets[$0.id] == $0.ticket })
        }
    }

    /// Removes and returns the stream at the front; nil when none waits.
    mutating func popFirst() -> StreamID? {
        while let entry = self.order.popFirst() {
            if self.tickets[entry.id] == entry.ticket {
                self.tickets[entry.id] = nil
                return entry.id
            }
        }
        return nil
    }
}
