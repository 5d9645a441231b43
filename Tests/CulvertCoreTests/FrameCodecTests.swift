import CulvertCore
import NIOCore
import NIOTestUtils
import Testing

/// The golden vectors in fixtures/frames.hex, computed independently of the Swift encoder.
enum GoldenFrames {
    static let frames: [String: Frame] = [
        "hello": .hello(Hello(version: 2, capabilities: [.compression, .resumption, .sealed], nonce: Array(0..<32),
                              keyShare: Array(200..<232),
                              maximumDataPayload: 32768)),
        "challenge": .challenge(Challenge(version: 2, capabilities: [.compression, .sealed], nonce: Array(32..<64),
                                          keyShare: Array(160..<192),
                                          maximumDataPayload: 16384)),
        "auth": .auth(Auth(proof: Array(64..<96), received: 0)),
        "welcome": .welcome(Welcome(proof: Array(96..<128), sessionID: Array(128..<144), capabilities: .resumption,
                                    received: 7)),
        "open": .open(streamID: 1, initialWindow: 262_144, target: TargetAddress(host: "example.com", port: 22)),
        "open_udp": .open(streamID: 3, initialWindow: 262_144, target: TargetAddress(host: "dns.internal", port: 53, transport: .udp)),
        "open_ok": .openOK(streamID: 1, initialWindow: 262_144),
        "open_fail": .openFail(streamID: 3, reason: .notAllowed, message: "not allowed"),
        "data": .data(streamID: 1, flags: [], payload: ByteBuffer(string: "hello")),
        "data_compressed": .data(streamID: 5, flags: .compressed, payload: ByteBuffer(bytes: [1, 2, 3])),
        "window": .window(streamID: 1, increment: 131_072),
        "fin": .fin(streamID: 1),
        "rst": .rst(streamID: 7, code: .cancelled, message: "cancelled"),
        "listen": .listen(requestID: 1, address: TargetAddress(host: "127.0.0.1", port: 2222)),
        "listen_udp": .listen(requestID: 3, address: TargetAddress(host: "127.0.0.1", port: 5353, transport: .udp)),
        "listen_ok": .listenOK(requestID: 1, port: 2222),
        "listen_fail": .listenFail(requestID: 3, reason: .notAllowed, message: "not allowed"),
        "ping": .ping(0x0102_0304_0506_0708),
        "pong": .pong(0x0102_0304_0506_0708),
        "ack": .ack(received: 42),
        "goaway": .goAway(code: .normal, message: "bye"),
        "sealed": .sealed(payload: ByteBuffer(bytes: Array(0..<20))),
    ]

    static func fixture() throws -> [(String, [UInt8])] {
        let path = fixturesDirectory() + "/frames.hex"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return text.split(separator: "\n").map { line in
            let parts = line.split(separator: " ")
            return (String(parts[0]), hexBytes(String(parts[1])))
        }
    }
}

func fixturesDirectory(file: String = #filePath) -> String {
    var components = file.split(separator: "/", omittingEmptySubsequences: false)
    components.removeLast(3)  // Tests/CulvertCoreTests/File.swift
    return components.joined(separator: "/") + "/fixtures"
}

func hexBytes(_ hex: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = hex.startIndex
    while index < hex.endIndex {
        let next = hex.index(index, offsetBy: 2)
        bytes.append(UInt8(hex[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

import Foundation

@Suite struct FrameCodecTests {
    /// Every frame type has a golden vector, and encoding gives exactly its bytes.
    @Test func encodingMatchesGoldenVectors() throws {
        let fixture = try GoldenFrames.fixture()
        #expect(Set(fixture.map(\.0)) == Set(GoldenFrames.frames.keys))
        let coveredTypes = Set(GoldenFrames.frames.values.map(\.type))
        #expect(coveredTypes == Set(FrameType.allCases))
        for (name, bytes) in fixture {
            let encoded = FrameEncoder().encode(GoldenFrames.frames[name]!)
            #expect(Array(encoded.readableBytesView) == bytes, "encoding of \(name)")
        }
    }

    /// Decoding each golden vector gives the frame back, whatever the fragmentation of the input.
    @Test func decodingGoldenVectorsUnderEveryFragmentation() throws {
        let fixture = try GoldenFrames.fixture()
        var all = ByteBuffer()
        var expected: [Frame] = []
        for (name, bytes) in fixture {
            all.writeBytes(bytes)
            expected.append(GoldenFrames.frames[name]!)
        }
        let pairs = fixture.map { (ByteBuffer(bytes: $0.1), [GoldenFrames.frames[$0.0]!]) } + [(all, expected)]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            FrameDecoder(maximumPayloadLength: 64 * 1024)
        }
    }

    /// An unknown type byte is refused with an error naming it.
    @Test func unknownFrameTypeIsRejected() {
        var decoder = FrameDecoder(maximumPayloadLength: 1024)
        var buffer = ByteBuffer(bytes: [0x7F, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(throws: FrameDecodingError.unknownFrameType(0x7F)) { try decoder.decode(buffer: &buffer) }
    }

    /// A header announcing more than the maximum fails before the payload arrives (no unbounded buffering).
    @Test func oversizedPayloadIsRejectedFromTheHeaderAlone() {
        var decoder = FrameDecoder(maximumPayloadLength: 1024)
        var buffer = ByteBuffer(bytes: [0x13, 0, 0, 0, 0, 1, 0, 0, 0x04, 0x01])
        #expect(throws: FrameDecodingError.payloadTooLarge(length: 1025, maximum: 1024)) {
            try decoder.decode(buffer: &buffer)
        }
        #expect(FrameDecodingError.payloadTooLarge(length: 1025, maximum: 1024).goAwayCode == .frameTooLarge)
    }

    /// Payloads of the wrong shape are malformed: short fixed fields, stream ids in the wrong place, zero increments.
    @Test func malformedPayloadsAreRejected() {
        let cases: [[UInt8]] = [
            [0x14, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1],  // WINDOW with a 2-byte payload
            [0x14, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0],  // WINDOW increment 0
            [0x13, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x41],  // DATA on stream 0
            [0x20, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],  // PING on stream 1
            [0x13, 0x80, 0, 0, 0, 1, 0, 0, 0, 1, 0x41],  // DATA with an unknown flag
            [0x10, 0, 0, 0, 0, 1, 0, 0, 0, 6, 0, 0, 1, 0, 0, 22],  // OPEN without a host
            [0x15, 0x01, 0, 0, 0, 1, 0, 0, 0, 0],  // FIN with flags
            [0x17, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 22, 0xA3, 0xA3],  // LISTEN whose host is not UTF-8 (found by the fuzzer)
            [0x10, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 1, 0, 0, 22, 0xC3, 0x28],  // OPEN whose host is not UTF-8
            [0x17, 0x02, 0, 0, 0, 1, 0, 0, 0, 3, 0, 22, 0x41],  // LISTEN with an unknown flag
        ]
        for bytes in cases {
            var decoder = FrameDecoder(maximumPayloadLength: 1024)
            var buffer = ByteBuffer(bytes: bytes)
            #expect(throws: FrameDecodingError.self, "\(bytes)") { try decoder.decode(buffer: &buffer) }
        }
    }

    /// Long messages in RST/GOAWAY are cut on encoding, so the peer never sees one it must refuse.
    @Test func longMessagesAreTruncated() throws {
        let frame = Frame.goAway(code: .protocolError, message: String(repeating: "x", count: 5000))
        var buffer = FrameEncoder().encode(frame)
        var decoder = FrameDecoder(maximumPayloadLength: 4096)
        let decoded = try decoder.decode(buffer: &buffer)
        guard case .goAway(_, let message) = decoded else {
            Issue.record("expected GOAWAY")
            return
        }
        #expect(message.utf8.count == FrameEncoder.maximumMessageLength)
    }
}
