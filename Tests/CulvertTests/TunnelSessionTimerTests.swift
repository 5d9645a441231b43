@testable import Culvert
import CulvertCore
import NIOCore
import NIOEmbedded
import Testing

/// The session driver's timers run on its loop's clock: on an `EmbeddedEventLoop` a test moves time forward with
/// `advanceTime` and sees each deadline act exactly when it falls due, with no sleeping.
@Suite struct TunnelSessionTimerTests {
    let sessions = TunnelSessionBadInputTests()

    /// A peer that never sends HELLO is cut at the handshake deadline (10 s), not before.
    @Test func aSilentPeerIsCutAtTheHandshakeDeadline() throws {
        let (session, transport) = self.sessions.startedServerSession(token: "t")
        transport.loop.advanceTime(by: .seconds(9))
        #expect(!transport.closed)
        transport.loop.advanceTime(by: .seconds(1))
        #expect(transport.closed)
        guard case .handshakeTimedOut? = try? session.ended.wait() else {
            Issue.record("the session did not end at its handshake deadline"); return
        }
    }

    /// 25 s of silence bring a PING; no PONG within 10 s declares the transport dead and the server session
    /// detaches, streams kept; 60 s later, not resumed, it ends.
    @Test func silenceBringsAPingThenADetachThenTheExpiry() throws {
        let (session, transport) = try self.sessions.establishedServerSession()
        transport.loop.advanceTime(by: .seconds(24))
        #expect(!transport.takeSent().contains { if case .ping = $0 { true } else { false } })
        transport.loop.advanceTime(by: .seconds(2))
        #expect(transport.takeSent().contains { if case .ping = $0 { true } else { false } })
        #expect(!transport.closed)
        transport.loop.advanceTime(by: .seconds(11))
        #expect(transport.closed)
        #expect(session.isDetached)
        transport.loop.advanceTime(by: .seconds(59))
        guard case .detachedExpired? = try? session.ended.wait() else {
            Issue.record("the detached session did not expire after its grace period"); return
        }
    }

    /// A peer that keeps talking is never pinged: every frame counts as heard at the next tick.
    @Test func trafficPostponesThePing() throws {
        let (session, transport) = try self.sessions.establishedServerSession()
        for second in 1...24 {
            transport.inject(.ping(UInt64(second)))
            transport.loop.advanceTime(by: .seconds(5))
            #expect(!transport.takeSent().contains { if case .ping = $0 { true } else { false } })
        }
        #expect(!transport.closed)
        #expect(!session.isDetached)
    }
}
