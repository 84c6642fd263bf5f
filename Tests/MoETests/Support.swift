import Foundation
@testable import MoE

/// Where the committed fixtures live (Tests/Fixtures), found from this file's path.
let fixturesDirectory: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path
}()

/// A fresh temporary directory, removed by the caller's `defer`.
func temporaryDirectory(_ label: String = "eaas-test") throws -> String {
    let path = NSTemporaryDirectory() + "\(label)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func removeDirectory(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

/// Largest absolute difference between two equally long arrays.
func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "compared arrays differ in length: \(a.count) vs \(b.count)")
    var worst: Float = 0
    for i in a.indices {
        let d = abs(a[i] - b[i])
        if d.isNaN { return .infinity }
        worst = max(worst, d)
    }
    return worst
}

/// A small deterministic generator for test data (the model generator's SplitMix64).
struct TestRandom {
    private var generator: SplitMix64
    init(seed: UInt64) { generator = SplitMix64(seed: seed &+ 0x9e37_79b9_7f4a_7c15) }
    mutating func next() -> UInt64 { generator.next() }
    /// Uniform in [-1, 1).
    mutating func float() -> Float { generator.nextUnit() * 2 - 1 }
    mutating func floats(_ count: Int, scale: Float = 1) -> [Float] { (0..<count).map { _ in float() * scale } }
}
