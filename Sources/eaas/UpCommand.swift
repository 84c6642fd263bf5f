import ArgumentParser

/// `eaas up`: placeholder replaced below.
struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "up", abstract: "Run the whole system on this machine.")
    func run() async throws {}
}
