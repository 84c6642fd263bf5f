import Foundation
import ServiceLifecycle

/// The generation engine as a service: its thread runs while the service group runs; on graceful
/// shutdown (SIGTERM) it stops taking requests (503, `/readyz` 503) and finishes every accepted
/// one before the HTTP server, which shuts down after it, stops.
public struct EngineService: Service {
    public let engine: GenerationEngine

    public init(engine: GenerationEngine) { self.engine = engine }

    public func run() async throws {
        engine.start()
        try? await gracefulShutdown()
        let engine = self.engine
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            // Draining blocks until the engine thread ends: off the cooperative pool.
            let thread = Thread {
                engine.shutdown(drain: true)
                done.resume()
            }
            thread.start()
        }
    }
}
