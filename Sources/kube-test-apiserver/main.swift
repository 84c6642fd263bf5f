import Foundation
import KubeTestServer

// The test API server by hand: `swift run kube-test-apiserver [port]`, then
// `kubectl --server http://127.0.0.1:<port> …` or a kubeconfig from `--kubeconfig FILE`.
var port = 8001
var kubeconfigPath: String?
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--kubeconfig": kubeconfigPath = arguments.popFirst()
    case "-h", "--help":
        print("usage: kube-test-apiserver [PORT (default 8001, 0: any)] [--kubeconfig FILE (written for clients)]")
        exit(0)
    default:
        guard let value = Int(argument), (0...65535).contains(value) else {
            FileHandle.standardError.write(Data("kube-test-apiserver: \(argument) is not a port number\n".utf8))
            exit(2)
        }
        port = value
    }
}
// SIGTERM and SIGINT stop it cleanly: handled here rather than by the default action, so that
// watches are ended and the port released before it exits 0. The handlers are in place (their
// registration awaited) before the server says it listens, so a signal sent as soon as the line
// is read is never lost to the default action. On Linux, Dispatch installs its own handler for a
// signal source (an ignored signal would be discarded before it sees it); Darwin's kqueue sees a
// signal only when its disposition is SIG_IGN.
let (stop, stopped) = AsyncStream<Int32>.makeStream()
let registered = DispatchGroup()
let sources = [SIGTERM, SIGINT].map { signal in
    #if canImport(Darwin)
    Foundation.signal(signal, SIG_IGN)
    #endif
    let source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
    source.setEventHandler { stopped.yield(signal) }
    registered.enter()
    source.setRegistrationHandler { registered.leave() }
    source.resume()
    return source
}
await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in registered.notify(queue: .global()) { done.resume() } }

var configuration = TestAPIServer.Configuration()
configuration.port = port
let server = try await TestAPIServer(configuration: configuration)
if let kubeconfigPath { try server.kubeconfig().write(toFile: kubeconfigPath, atomically: true, encoding: .utf8) }
print("kube-test-apiserver listening on \(server.url)")
fflush(nil)  // a pipe is fully buffered: whoever waits for this line must get it now
for await signal in stop {
    FileHandle.standardError.write(Data("kube-test-apiserver: signal \(signal), stopping\n".utf8))
    break
}
sources.forEach { $0.cancel() }
await server.shutdown()
exit(0)
