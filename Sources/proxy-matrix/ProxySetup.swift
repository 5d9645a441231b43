import CulvertTools

/// One proxy configuration of the matrix: a fixture from `fixtures/proxies/` and what sets it apart.
struct ProxySetup: Sendable {
    var kind: RealProxy.Kind
    /// The fixture's file name.
    var file: String
    /// "Debian defaults", or the one setting the variant changes.
    var setting: String
    /// The proxy's default idle or read timeout that an idle tunnel must outlast, in seconds, and its name.
    var idleTimeoutSeconds: Int
    var idleTimeoutName: String

    /// Every configuration, the longest idle holds first (they run side by side with the rest).
    static let all: [ProxySetup] = [
        ProxySetup(kind: .squid, file: "squid-forward.conf", setting: "Debian defaults",
                   idleTimeoutSeconds: 900, idleTimeoutName: "read_timeout 15 min"),
        ProxySetup(kind: .squid, file: "squid-forward-websocket.conf", setting: "+ `http_upgrade_request_protocols websocket allow all`",
                   idleTimeoutSeconds: 900, idleTimeoutName: "read_timeout 15 min"),
        ProxySetup(kind: .squid, file: "squid-forward-content-rules.conf",
                   setting: "+ `req_mime_type` and `rep_mime_type` ACLs denying `application/octet-stream`",
                   idleTimeoutSeconds: 900, idleTimeoutName: "read_timeout 15 min"),
        ProxySetup(kind: .squid, file: "squid-forward-header-rules.conf", setting: "+ `request_header_access Other deny all`",
                   idleTimeoutSeconds: 900, idleTimeoutName: "read_timeout 15 min"),
        ProxySetup(kind: .tinyproxy, file: "tinyproxy-forward.conf", setting: "Debian defaults",
                   idleTimeoutSeconds: 600, idleTimeoutName: "Timeout 600"),
        ProxySetup(kind: .tinyproxy, file: "tinyproxy-forward-connectport.conf", setting: "+ `ConnectPort 443`",
                   idleTimeoutSeconds: 600, idleTimeoutName: "Timeout 600"),
        ProxySetup(kind: .nginx, file: "nginx-reverse.conf", setting: "Debian defaults, `proxy_pass` only",
                   idleTimeoutSeconds: 60, idleTimeoutName: "proxy_read_timeout 60s"),
        ProxySetup(kind: .nginx, file: "nginx-reverse-websocket.conf",
                   setting: "+ `proxy_http_version 1.1`, `Upgrade`/`Connection` headers",
                   idleTimeoutSeconds: 60, idleTimeoutName: "proxy_read_timeout 60s"),
        ProxySetup(kind: .haproxy, file: "haproxy-reverse.cfg", setting: "Debian defaults",
                   idleTimeoutSeconds: 50, idleTimeoutName: "timeout client/server 50s"),
        ProxySetup(kind: .haproxy, file: "haproxy-reverse-buffer-request.cfg", setting: "+ `option http-buffer-request`",
                   idleTimeoutSeconds: 50, idleTimeoutName: "timeout client/server 50s"),
    ]
}
