import ArgumentParser
import Kube
import MoE

/// `eaas version`: what this binary is built on.
struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print versions of EaaS and the libraries it uses.")

    func run() {
        print("eaas 0.1.0")
        print("blas: OpenBLAS (\(BLAS.coreName)), element-wise kernels: \(BLAS.kernelVariant)")
        print("curl: \(LibraryVersions.curl)")
        print("yaml: \(LibraryVersions.yaml)")
    }
}
