import CBLAS
import Foundation

/// How the GEMMs of `bf16MinimumRows` rows or more on bf16 weights multiply: prefill, the dense
/// layers of a decode batch of 4 or more, experts with 4 or more of a step's tokens. Products of
/// fewer rows (a decode step's usual expert groups, batch 1–3) always run the exact skinny pass.
///
/// Chosen per process by `EAAS_MATMUL` (`bf16`, the default, or `exact`) and per `ExpertScratch`.
public enum MatmulPrecision: String, Sendable, Equatable {
    /// f32 products of the exactly widened weights and the f32 activations (OpenBLAS sgemm): the
    /// path held to transformers in f32 within 1e-4.
    case exact
    /// On a CPU with avx512_bf16, the activations are rounded to bf16 (nearest even) and multiplied
    /// with `vdpbf16ps`, sums in f32, at twice the FMA rate and without widening the weights. The
    /// rounding is the only change: each product carries a relative error of at most 2⁻⁸ of
    /// |x·w| (the fixture tests state the whole model's tolerance). Without avx512_bf16: `exact`.
    case bf16

    /// Fewest rows that take the bf16 dot products. Measured on this 2-core Zen 4 (decode, default
    /// `eaas bench e2e` model): batch 32 decode 107 tok/s all exact, 122 from 16 rows (the dense
    /// layers), 126 from 8, 135 from 4, 131 from 3; batch 8 61 → 65. Below 4 rows the exact
    /// skinny pass is bandwidth-bound already and rounding would buy nothing.
    public static let bf16MinimumRows = 4

    /// The process's choice: `EAAS_MATMUL`, `bf16` when unset. A value that is neither stops the
    /// process with a message naming it (read once, when the first scratch is made).
    public static let process: MatmulPrecision = {
        guard let value = ProcessInfo.processInfo.environment["EAAS_MATMUL"], !value.isEmpty else { return .bf16 }
        guard let precision = MatmulPrecision(rawValue: value.lowercased()) else {
            FileHandle.standardError.write(Data("Error: EAAS_MATMUL='\(value)' is not 'bf16' or 'exact'\n".utf8))
            exit(2)
        }
        return precision
    }()

    /// Whether this CPU has the bf16 dot products the `bf16` precision uses.
    public static let cpuHasBF16Dot = eaas_bf16dot_available() != 0

    /// What a GEMM on `weight` actually runs under this precision, here.
    public var effective: MatmulPrecision { self == .bf16 && Self.cpuHasBF16Dot ? .bf16 : .exact }

    /// One line for a startup log.
    public var summary: String {
        switch effective {
        case .exact where self == .bf16: "exact (this CPU has no avx512_bf16)"
        case .exact: "exact (EAAS_MATMUL=exact: f32 products)"
        case .bf16: "bf16 dot products for GEMMs of \(Self.bf16MinimumRows) rows or more on bf16 weights (EAAS_MATMUL=exact for f32 products)"
        }
    }
}
