import CulvertCore
import NIOCore

/// What a listener hands its accepted connections to: the tunnel that carries each as a stream (the client, which
/// routes it to its current session). Called on the channel's event loop; `completion` runs there too, once the
/// peer opened the target or refused it, so that the listener can answer its own client before any byte flows.
protocol StreamOpening: Sendable {
    func carry(_ channel: any Channel, to target: TargetAddress, completion: @escaping (StreamOpenResult) -> Void)
}
