import ArgumentParser

/// `eaas`: the one binary of Expert-as-a-Service.
@main
struct EaaS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eaas",
        abstract: "Expert-as-a-Service: serve mixture-of-experts models with experts as independent pods.",
        subcommands: [UpCommand.self, ModelCommand.self, GenerateCommand.self, TokenizeCommand.self, WorkerCommand.self, ExpertPodCommand.self, DrainCommand.self, ControllerCommand.self, BenchCommand.self, TransportServerCommand.self, VersionCommand.self]
    )
}

/// `eaas model …`: make and read checkpoints.
struct ModelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Make and inspect MoE checkpoints (Hugging Face config.json + safetensors).",
        subcommands: [ModelInitCommand.self, ModelImportCommand.self, ModelInspectCommand.self]
    )
}

/// `eaas bench …`: benchmarks that print ratios measured side by side in one run.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks; each prints ratios against its reference measured in the same run.",
        subcommands: [ExpertsBenchCommand.self, TransportBenchCommand.self, PodBenchCommand.self, E2EBenchCommand.self, ElasticBenchCommand.self, InformerBenchCommand.self, TokenizerBenchCommand.self, PodClientCommand.self, OverlapWorkerCommand.self]
    )
}
