extension Duration {
    /// The duration in seconds as a `Double` (rates, backoff arithmetic, autoscaler clocks).
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
