import CBLAS
import Foundation
import Testing
@testable import MoE

@Suite("Element-wise kernels")
struct KernelTests {
    @Test("Widening every f16 and bf16 bit pattern is exact (Swift's Float16 and the bf16 definition as reference)")
    func wideningIsExactForAllPatterns() {
        let patterns = (0...UInt16.max).map { $0 }
        var half = [Float](repeating: 0, count: patterns.count)
        var brain = [Float](repeating: 0, count: patterns.count)
        patterns.withUnsafeBytes { raw in
            FloatConversion.widen(.f16, from: raw.baseAddress!, to: &half, count: patterns.count)
            FloatConversion.widen(.bf16, from: raw.baseAddress!, to: &brain, count: patterns.count)
        }
        var halfMismatches = 0, brainMismatches = 0
        for (i, bits) in patterns.enumerated() {
            let expectedHalf = Float(Float16(bitPattern: bits))
            if !(half[i].bitPattern == expectedHalf.bitPattern || (half[i].isNaN && expectedHalf.isNaN)) { halfMismatches += 1 }
            if brain[i].bitPattern != UInt32(bits) << 16 { brainMismatches += 1 }
        }
        #expect(halfMismatches == 0)
        #expect(brainMismatches == 0)
    }

    @Test("Narrowing to f16 and bf16 rounds to nearest even, like Swift's Float16 and the bf16 definition")
    func narrowingRoundsToNearestEven() {
        var random = TestRandom(seed: 3)
        var values: [Float] = (0..<20000).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: random.next())) }
        values += [0, -0, 65504, 65519.99, 65520, 1e-8, 2.98e-8, 2.99e-8, 6.0e-8, .infinity, -.infinity, 1.00048828125, 1.00146484375]
        let half = values.withUnsafeBufferPointer { FloatConversion.encode($0, as: .f16) }
        let brain = values.withUnsafeBufferPointer { FloatConversion.encode($0, as: .bf16) }
        var halfMismatches: [Float] = [], brainMismatches: [Float] = []
        for (i, v) in values.enumerated() {
            let h = UInt16(half[2 * i]) | UInt16(half[2 * i + 1]) << 8
            let b = UInt16(brain[2 * i]) | UInt16(brain[2 * i + 1]) << 8
            let expectedHalf = Float16(v)
            if v.isNaN {
                if !Float16(bitPattern: h).isNaN { halfMismatches.append(v) }
                if !Float(bitPattern: UInt32(b) << 16).isNaN { brainMismatches.append(v) }
                continue
            }
            if h != expectedHalf.bitPattern { halfMismatches.append(v) }
            // bf16 reference: round the f32 bits to nearest even on the top 16 bits.
            let u = v.bitPattern
            let expectedBrain = UInt16(truncatingIfNeeded: (u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16)
            if b != expectedBrain { brainMismatches.append(v) }
        }
        #expect(halfMismatches.isEmpty, "f16 mismatches for \(halfMismatches.prefix(5))")
        #expect(brainMismatches.isEmpty, "bf16 mismatches for \(brainMismatches.prefix(5))")
    }

    @Test("silu(gate) * up agrees with a double-precision reference to a few ulps (absolute 1e-30 where the result underflows)")
    func siluMultiply() {
        var random = TestRandom(seed: 5)
        var gate = random.floats(4096, scale: 20)
        gate += [0, -0, 88, -88, 100, -100, -104, -200, 1e-30]
        let up = (0..<gate.count).map { _ in random.float() * 3 }
        var out = [Float](repeating: .nan, count: gate.count)
        eaas_silu_mul(gate, up, &out, gate.count)
        for i in gate.indices {
            let g = Double(gate[i]), reference = g / (1 + Foundation.exp(-g)) * Double(up[i])
            let tolerance = max(abs(reference) * 4e-7, 1e-30)  // exp saturates at 88.7: silu of x < -88 is ~0
            #expect(abs(Double(out[i]) - reference) <= tolerance, "silu_mul(\(gate[i]), \(up[i])) = \(out[i]), expected \(reference)")
        }
    }

    @Test("axpy accumulates w·x into acc")
    func axpy() {
        let x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9]
        var acc: [Float] = [Float](repeating: 1, count: 9)
        eaas_axpy(0.5, x, &acc, 9)
        #expect(acc == x.map { 1 + 0.5 * $0 })
    }
}
