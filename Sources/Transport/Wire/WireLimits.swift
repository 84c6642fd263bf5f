/// Upper bounds a decoder enforces before it trusts a length or a count from the wire, so that a
/// malformed or hostile frame cannot make a peer allocate or read without bound.
public struct WireLimits: Sendable, Equatable {
    /// Largest payload after the 16-byte header (default 256 MiB).
    public var maxPayload: Int = 256 << 20
    /// Most tokens in one request (default 65 536).
    public var maxTokens: Int = 65_536
    /// Largest hidden size (default 65 536).
    public var maxHidden: Int = 65_536
    /// Most expert slots per token in one request (default 64).
    public var maxSlotsPerToken: Int = 64
    /// Most (layer, expert) pairs a server may announce (default 1 M).
    public var maxHostedExperts: Int = 1 << 20
    /// Longest pool token, error message or backend blob (default 64 KiB).
    public var maxText: Int = 64 << 10

    public init() {}
}
