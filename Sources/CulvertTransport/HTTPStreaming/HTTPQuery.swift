/// The `name=value` pairs of a request target's query (values here are plain tokens: ids, numbers, modes).
struct HTTPQuery {
    private var values: [Substring: Substring] = [:]

    init(uri: String) {
        guard let question = uri.firstIndex(of: "?") else { return }
        for pair in uri[uri.index(after: question)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            self.values[parts[0]] = parts.count == 2 ? parts[1] : ""
        }
    }

    subscript(name: String) -> String? {
        self.values[Substring(name)].map(String.init)
    }
}
