import Foundation
import JSON

/// YaRN rotary scaling as transformers computes it (`_compute_yarn_parameters`): inverse
/// frequencies blended between interpolated (divided by `factor`) and extrapolated ones over a ramp
/// between the correction dimensions of `betaFast` and `betaSlow`, cos/sin scaled by
/// `attentionFactor`, and for DeepSeek's latent attention the softmax scale multiplied by
/// `mscale(factor, mscaleAllDim)²`.
public struct YarnScaling: Sendable, Equatable {
    public var factor: Double
    public var originalMaxPositions: Int
    public var betaFast: Double
    public var betaSlow: Double
    public var mscale: Double?
    public var mscaleAllDim: Double?
    public var attentionFactor: Double
    public var truncate: Bool

    /// `0.1 · mscale · ln(scale) + 1` (1 for scale ≤ 1), YaRN's Eq. 21.
    public static func mscale(_ scale: Double, _ m: Double = 1) -> Double { scale <= 1 ? 1 : 0.1 * m * log(scale) + 1 }

    init(_ p: [String: JSONValue], maxPositions: Int?, field f: ConfigFields) throws {
        guard let original = p["original_max_position_embeddings"]?.int, original > 0 else {
            throw f.error("field 'rope_parameters': yarn needs a positive 'original_max_position_embeddings'")
        }
        originalMaxPositions = original
        if let given = p["factor"]?.double {
            factor = given
        } else if let maxPositions {
            factor = Double(maxPositions) / Double(original)
        } else {
            throw f.error("field 'rope_parameters': yarn needs a 'factor'")
        }
        guard factor >= 1, factor.isFinite else { throw f.error("field 'rope_parameters': yarn 'factor' must be at least 1 (got \(factor))") }
        func number(_ key: String) throws -> Double? {
            guard let v = p[key], v != .null else { return nil }
            guard let d = v.double, d.isFinite else { throw f.error("field 'rope_parameters': '\(key)' must be a number") }
            return d
        }
        // transformers: `get("beta_fast") or 32` — a zero falls back too.
        betaFast = try number("beta_fast").flatMap { $0 == 0 ? nil : $0 } ?? 32
        betaSlow = try number("beta_slow").flatMap { $0 == 0 ? nil : $0 } ?? 1
        mscale = try number("mscale")
        mscaleAllDim = try number("mscale_all_dim")
        if let given = try number("attention_factor") {
            attentionFactor = given
        } else if let m = mscale, let all = mscaleAllDim, m != 0, all != 0 {
            attentionFactor = Self.mscale(factor, m) / Self.mscale(factor, all)
        } else {
            attentionFactor = Self.mscale(factor)
        }
        truncate = p["truncate"]?.bool ?? true
    }

    /// The softmax scale multiplier of DeepSeek's latent attention (`yarn_apply_mscale`).
    public var softmaxScaleFactor: Double {
        guard let all = mscaleAllDim, all != 0 else { return 1 }
        let m = Self.mscale(factor, all)
        return m * m
    }
}
