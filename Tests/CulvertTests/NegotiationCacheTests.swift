import Culvert
import CulvertTransport
import Foundation
import Testing

struct NegotiationCacheTests {
    /// The cache lives under XDG_CACHE_HOME, else ~/.cache.
    @Test func cacheFollowsXDGThenHome() {
        #expect(NegotiationCache.userCache(environment: ["XDG_CACHE_HOME": "/x", "HOME": "/h"])?.fileURL.path == "/x/culvert/transports.json")
        #expect(NegotiationCache.userCache(environment: ["HOME": "/h"])?.fileURL.path == "/h/.cache/culvert/transports.json")
        #expect(NegotiationCache.userCache(environment: [:]) == nil)
    }

    /// Winners are kept per (server, proxy), survive a new instance, and can be forgotten.
    @Test func winnersAreRememberedPerServerAndProxy() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("culvert-cache-\(UUID().uuidString)/culvert/transports.json")
        defer { try? FileManager.default.removeItem(at: file.deletingLastPathComponent().deletingLastPathComponent()) }
        let server = ServerEndpoint(host: "tunnel.example", port: 8080)
        let proxy = ProxyConfiguration(host: "proxy.example", port: 3128)
        let cache = NegotiationCache(fileURL: file)
        #expect(cache.winner(server: server, proxy: nil) == nil)
        cache.remember(.websocket, server: server, proxy: nil)
        cache.remember(.polling, server: server, proxy: proxy)
        let reopened = NegotiationCache(fileURL: file)
        #expect(reopened.winner(server: server, proxy: nil) == .websocket)
        #expect(reopened.winner(server: server, proxy: proxy) == .polling)
        reopened.remember(nil, server: server, proxy: proxy)
        #expect(NegotiationCache(fileURL: file).winner(server: server, proxy: proxy) == nil)
    }
}
