// Compiled into the fuzz build's `MoE` module in place of Sources/MoE/MappedFile.swift (which needs
// swift-system and a real file): the "file" is the fuzz input in memory, so that
// `SafeTensorsFile(path:)` runs unchanged on it and ASan sees every read past the input.
// Keep it in step with what SafeTensorsFile.swift uses of `MappedFile`.
public final class MappedFile: @unchecked Sendable {
    /// The bytes the next `MappedFile(path:)` "maps", whatever the path.
    nonisolated(unsafe) public static var fuzzInput = UnsafeRawBufferPointer(start: nil, count: 0)

    public let path: String
    public let base: UnsafeRawPointer?
    public let count: Int

    public init(path: String) throws {
        self.path = path
        base = Self.fuzzInput.count == 0 ? nil : Self.fuzzInput.baseAddress
        count = Self.fuzzInput.count
    }

    /// As the real one: the caller has checked that `range` lies inside the file.
    public func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "range outside \(path)")
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }
}
