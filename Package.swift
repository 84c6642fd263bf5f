// swift-tools-version:6.0
// EaaS: Expert-as-a-Service. Module map and rules: see DESIGN.md in the shared folder and README.md.
import PackageDescription

/// C kernels are built with optimisation even in debug builds (tests run them on real data), and
/// without FMA contraction so that every dispatch variant of a kernel rounds the same way.
let cKernelFlags: [CSetting] = [.unsafeFlags(["-O2", "-ffp-contract=off"])]

let package = Package(
    name: "EaaS",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "eaas", targets: ["eaas"]),
        .library(name: "MoE", targets: ["MoE"]),
        .library(name: "Transport", targets: ["Transport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // Hummingbird's own dependencies, named for the worker's connection handler (NIOCore, NIOHTTPTypes).
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
    ],
    targets: [
        // C shims: one small target per C library. Nothing but the module named beside each imports it.
        .target(name: "CBLAS", cSettings: cKernelFlags, linkerSettings: [.linkedLibrary("openblas")]),  // MoE
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("curl")]),  // Kube
        .target(name: "CYAML", linkerSettings: [.linkedLibrary("yaml")]),  // Kube
        .target(name: "CVerbs", linkerSettings: [.linkedLibrary("ibverbs")]),  // Transport
        .target(name: "CPlatform"),  // Linux calls hidden behind _GNU_SOURCE (CPU affinity); ExpertPod, eaas

        // Child processes that die with their parent and inherit no ignored signals (fork on one thread).
        .target(name: "Platform", dependencies: ["CPlatform"]),
        // JSONValue: the one JSON type, shared by checkpoints, the worker's API and Kubernetes objects.
        .target(name: "JSON"),
        // GGUF (llama.cpp's format): metadata and tensor table, read with every offset checked.
        .target(name: "GGUF"),
        // Tokenizers (tokenizer.json, GGUF metadata), as Hugging Face `tokenizers` runs them.
        .target(name: "Text", dependencies: ["JSON", "GGUF"]),
        .target(name: "MoE", dependencies: [
            "CBLAS", "JSON", "GGUF", .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "Transport", dependencies: [
            "CVerbs", "CPlatform", .product(name: "Atomics", package: "swift-atomics"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "ExpertPod", dependencies: [
            "MoE", "Transport", "CPlatform",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Hummingbird", package: "hummingbird"),
        ]),
        .target(name: "AttentionWorker", dependencies: [
            "MoE", "JSON", "Text", "GGUF", "Transport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
        ]),
        .target(name: "Kube", dependencies: ["CCurl", "CYAML", "JSON"]),
        // A Kubernetes API server in memory for tests (and by hand: `swift run kube-test-apiserver`);
        // kubectl and the official Python client are run against it to keep it faithful.
        .target(name: "KubeTestServer", dependencies: [
            "Kube", "JSON",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "kube-test-apiserver", dependencies: ["KubeTestServer"]),
        .target(name: "Controller", dependencies: [
            "Kube", "JSON", "MoE", "Transport", "Platform",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "eaas", dependencies: [
            "MoE", "JSON", "Text", "GGUF", "Transport", "ExpertPod", "AttentionWorker", "Kube", "KubeTestServer", "Controller", "CPlatform", "Platform",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "MoETests", dependencies: ["MoE", "JSON"]),
        // Tokenizers against `tokenizers`' ids on real files fetched with pip (scripts/tokenizer-references).
        .testTarget(name: "TextTests", dependencies: ["Text", "GGUF", "JSON", "Platform"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport"]),
        .testTarget(name: "PlatformShimTests", dependencies: ["Transport", "Kube", "ExpertPod", "Platform", "MoE", "CPlatform"]),
        // The expert pod in-process (shard, batching, bad input) and as a process (HTTP, SIGTERM).
        .testTarget(name: "ExpertPodTests", dependencies: ["ExpertPod", "MoE", "Transport", "Platform", "eaas"]),
        // Runs the built `eaas` binary; the dependency makes `swift test` build it first.
        // The Kubernetes client, informer, work queue, controller runtime, typed views and leader
        // election against the test API server,
        // and kubectl and the official Python client against the same server.
        .testTarget(name: "KubeTests", dependencies: ["Kube", "KubeTestServer", "JSON", "Platform"],
                    exclude: ["python_client_check.py", "tls_server.py"]),
        // The operator against the test API server with the local runtime (pods as in-process HTTP
        // servers): children, status, scaling, rollout, GC, leader election; the spec, CRD and plan
        // tables; the chart against Manifests; kubectl applying Manifests with `eaas controller` processes;
        // rollouts (a new grouping, a new checkpoint) under load with real `eaas expert-pod` processes
        // and attention workers, tokens compared.
        .testTarget(name: "ControllerTests", dependencies: [
            "Controller", "Kube", "KubeTestServer", "JSON", "Transport", "Platform", "AttentionWorker", "MoE", "eaas",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "CLITests", dependencies: ["Platform", "eaas", "kube-test-apiserver"]),
        // The attention worker against transformers' whole-model fixtures, local and remote experts,
        // the OpenAI-shaped HTTP API, and generation through a SIGKILLed expert pod.
        .testTarget(name: "AttentionWorkerTests", dependencies: ["AttentionWorker", "JSON", "Text", "ExpertPod", "MoE", "Transport", "Platform", "eaas"],
                    exclude: ["openai_client_check.py"]),
        // Data-plane scenarios across processes: `eaas transport-server` children, killed and drained.
        .testTarget(name: "DataPlaneScenarioTests", dependencies: ["eaas", "Transport", "Platform"]),
    ]
)
