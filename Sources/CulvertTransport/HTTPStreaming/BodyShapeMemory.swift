import NIOConcurrencyHelpers

/// What one session's chunked or polling connections learnt about the path's content rules: the body shape and
/// size limit the last of them settled on, so that a connection the session resumes on starts there instead of
/// having its first requests refused again. A lock, not a loop: a session's connections may live on different
/// loops before one adopts another.
public final class BodyShapeMemory: Sendable {
    /// The step of the fallback order a connection reached: its shape, and its body size limit once it had one.
    public struct Step: Sendable, Equatable {
        public var shape: HTTPBodyShape
        public var byteLimit: Int?

        public init(shape: HTTPBodyShape, byteLimit: Int? = nil) {
            self.shape = shape
            self.byteLimit = byteLimit
        }
    }

    private let step = NIOLockedValueBox<Step?>(nil)

    /// - Parameter learnt: where to start (a path known to refuse binary, say); nil: at the first shape.
    public init(learnt: Step? = nil) {
        self.step.withLockedValue { $0 = learnt }
    }

    /// Where the session's last connection got to; nil until one was refused.
    public var learnt: Step? { self.step.withLockedValue { $0 } }

    /// Keeps `step`, reached after a refusal.
    func remember(_ step: Step) {
        self.step.withLockedValue { $0 = step }
    }
}
