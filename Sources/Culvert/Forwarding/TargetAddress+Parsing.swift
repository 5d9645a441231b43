public import CulvertCore

extension TargetAddress {
    /// Parses `HOST:PORT` as given to `flag` (`--stdio`); an IPv6 host goes in brackets.
    public init(parsing text: String, flag: String) throws(ForwardingError) {
        guard let (host, portText) = HostPortParser.split(text) else {
            throw .invalidListen(flag: flag, text, text.filter { $0 == ":" }.count > 1 && !text.contains("[")
                ? "expected HOST:PORT (an IPv6 host goes in brackets, e.g. [fd00::5]:22)" : "expected HOST:PORT")
        }
        guard !host.isEmpty else { throw .invalidListen(flag: flag, text, "HOST is empty") }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw .invalidListen(flag: flag, text, "PORT '\(portText)' must be a number from 1 to 65535")
        }
        self.init(host: host, port: port)
    }
}
