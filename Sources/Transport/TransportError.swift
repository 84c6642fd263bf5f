import SystemPackage

/// A failure of the data plane that is not a malformed frame (those are `WireError`).
public enum TransportError: Error, CustomStringConvertible, Sendable, Equatable {
    /// An operating-system call failed: the one place an errno becomes a Swift error.
    case system(operation: String, path: String, errno: Errno)
    /// A shared region or slot does not have the layout this build expects.
    case badRegion(path: String, reason: String)
    /// No response came for `sequence` within the timeout.
    case timedOut(sequence: UInt64, after: Duration)
    /// A server address that cannot be resolved or reached in time.
    case unreachable(address: String, reason: String)

    public var description: String {
        switch self {
        case let .system(operation, path, errno): "\(operation) \(path): \(errno.description) (errno \(errno.rawValue))"
        case let .badRegion(path, reason): "shared region \(path): \(reason)"
        case let .timedOut(sequence, after): "no response to request \(sequence) within \(after)"
        case let .unreachable(address, reason): "\(address): \(reason)"
        }
    }

    /// Runs a swift-system call, turning its `Errno` into `.system` naming the operation and path.
    static func wrap<T>(_ operation: String, _ path: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let errno as Errno {
            throw TransportError.system(operation: operation, path: path, errno: errno)
        }
    }
}
