import ArgumentParser
import CulvertCore
import Foundation

/// `culvert hash-token`: prints the `token-hash` a users file may hold instead of a user's token, so that the file
/// need not hold the secret; `--generate` makes a fresh random token first.
struct HashTokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hash-token",
        abstract: "Print the token-hash of a token, for a server's users file (the file then need not hold the token).",
        discussion: """
            The token comes from --token, --token-file or CULVERT_TOKEN, or the first line of standard input.
            With --generate, a fresh random token is made and printed first, on its own line, for the user.
            """
    )

    @OptionGroup var tokenOptions: TokenOptions

    @Flag(help: "Make a fresh random token (256 bits, hex) and print it above its hash.")
    var generate = false

    func run() throws {
        let token: String
        if self.generate {
            token = HandshakeStateMachine.systemRandomBytes(32).lowercaseHex
            print("token = \"\(token)\"")
        } else if let given = try self.tokenOptions.resolve() {
            token = given
        } else if let line = readLine(strippingNewline: true), !line.isEmpty {
            token = line
        } else {
            fail("no token: pass --token, --token-file, set CULVERT_TOKEN, write it on standard input, or use --generate", exitCode: 2)
        }
        print("token-hash = \"\(TokenVerifier(token: token).hashText)\"")
    }
}
