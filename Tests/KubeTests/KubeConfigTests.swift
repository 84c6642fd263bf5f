import Foundation
import JSON
import Kube
import KubeTestServer
import Testing

@Suite("Kubeconfig and in-cluster configuration")
struct KubeConfigTests {
    static let kubeconfig = """
        apiVersion: v1
        kind: Config
        current-context: dev
        clusters:
        - name: prod
          cluster:
            server: https://prod.example.com:6443/
            certificate-authority-data: \(Data("PROD-CA".utf8).base64EncodedString())
        - name: dev
          cluster:
            server: https://127.0.0.1:6443
            insecure-skip-tls-verify: true
        users:
        - name: admin
          user:
            client-certificate-data: \(Data("CERT".utf8).base64EncodedString())
            client-key-data: \(Data("KEY".utf8).base64EncodedString())
        - name: robot
          user: {token: abc123}
        - name: half
          user:
            client-certificate-data: \(Data("CERT".utf8).base64EncodedString())
        - name: cloud
          user:
            exec: {apiVersion: client.authentication.k8s.io/v1, command: gke-gcloud-auth-plugin}
        contexts:
        - name: dev
          context: {cluster: dev, user: robot, namespace: experts}
        - name: prod
          context: {cluster: prod, user: admin}
        - name: broken
          context: {cluster: nowhere, user: admin}
        - name: half
          context: {cluster: prod, user: half}
        - name: cloud
          context: {cluster: prod, user: cloud}
        """

    @Test("current-context, namespace, token, insecure")
    func currentContext() throws {
        let connection = try ClusterConnection.kubeconfig(yaml: Self.kubeconfig)
        #expect(connection.server == "https://127.0.0.1:6443")
        #expect(connection.namespace == "experts")
        #expect(connection.bearerToken == "abc123")
        #expect(connection.insecureSkipTLSVerify)
        #expect(connection.certificateAuthority == nil)
    }

    @Test("A named context: CA and client certificate from base64 data, trailing slash dropped, default namespace")
    func namedContext() throws {
        let connection = try ClusterConnection.kubeconfig(yaml: Self.kubeconfig, context: "prod")
        #expect(connection.server == "https://prod.example.com:6443")
        #expect(connection.certificateAuthority == Array("PROD-CA".utf8))
        #expect(connection.clientCertificate == Array("CERT".utf8))
        #expect(connection.clientKey == Array("KEY".utf8))
        #expect(connection.namespace == "default")
        #expect(connection.bearerToken == nil)
    }

    @Test("Errors name the missing piece", arguments: [
        ("missing", "context \"missing\" not found"),
        ("broken", "cluster \"nowhere\""),
        ("half", "client certificate but no client key"),
        ("cloud", "gke-gcloud-auth-plugin"),
    ])
    func errors(context: String, message: String) {
        #expect { try ClusterConnection.kubeconfig(yaml: Self.kubeconfig, context: context) } throws: {
            "\($0)".contains(message)
        }
    }

    @Test("Not YAML, or no current context, is reported")
    func malformed() {
        #expect { try ClusterConnection.kubeconfig(yaml: "clusters: [unclosed") } throws: { "\($0)".contains("YAML") }
        #expect { try ClusterConnection.kubeconfig(yaml: "clusters: []\n") } throws: { "\($0)".contains("no current-context") }
    }

    @Test("$KUBECONFIG files merge (the first to name an entry wins); relative file paths resolve beside the file")
    func mergedFiles() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "CA-FROM-FILE".write(toFile: directory + "/ca.pem", atomically: true, encoding: .utf8)
        try "tok-from-file\n".write(toFile: directory + "/token", atomically: true, encoding: .utf8)
        try """
            current-context: local
            contexts: [{name: local, context: {cluster: local, user: me}}]
            clusters: [{name: local, cluster: {server: "https://first:1", certificate-authority: ca.pem}}]
            """.write(toFile: directory + "/a.yaml", atomically: true, encoding: .utf8)
        try """
            current-context: other
            clusters: [{name: local, cluster: {server: "https://second:2"}}]
            users: [{name: me, user: {tokenFile: token}}]
            """.write(toFile: directory + "/b.yaml", atomically: true, encoding: .utf8)
        let connection = try ClusterConnection.automatic(environment: ["KUBECONFIG": "\(directory)/a.yaml:\(directory)/b.yaml", "HOME": directory])
        #expect(connection.server == "https://first:1")
        #expect(connection.certificateAuthority == Array("CA-FROM-FILE".utf8))
        #expect(connection.bearerTokenFile == directory + "/token")
    }

    @Test("In-cluster: service host and port, the mounted token, CA and namespace")
    func inCluster() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try "token".write(toFile: root + "/token", atomically: true, encoding: .utf8)
        try "CA".write(toFile: root + "/ca.crt", atomically: true, encoding: .utf8)
        try "eaas-system\n".write(toFile: root + "/namespace", atomically: true, encoding: .utf8)
        let environment = ["KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"]
        let connection = try ClusterConnection.inCluster(environment: environment, root: root)
        #expect(connection.server == "https://[fd00::1]:443")
        #expect(connection.bearerTokenFile == root + "/token")
        #expect(connection.certificateAuthority == Array("CA".utf8))
        #expect(connection.namespace == "eaas-system")
        #expect { try ClusterConnection.inCluster(environment: [:], root: root) } throws: { "\($0)".contains("KUBERNETES_SERVICE_HOST") }
        #expect { try ClusterConnection.inCluster(environment: environment, root: root + "/none") } throws: { "\($0)".contains("token") }
        #expect { try ClusterConnection.automatic(environment: ["HOME": root]) } throws: { "\($0)".contains("no Kubernetes configuration") }
    }

    @Test("A kubeconfig written by the test API server connects")
    func testServerKubeconfig() async throws {
        let api = try await APIFixture.start { $0.requiredBearerToken = "t0k" }
        defer { Task { await api.close() } }
        let connection = try ClusterConnection.kubeconfig(yaml: api.server.kubeconfig(namespace: "kube-system"))
        #expect(connection.namespace == "kube-system")
        let client = KubeClient(connection: connection, configuration: .testing)
        #expect(try await client.get(.namespaces, "kube-system").name == "kube-system")
    }

    func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kubeconfig-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

let opensslPath = ClientProcess.find("openssl")
let python3Path = ClientProcess.find("python3")

@Suite("TLS: CA data, client certificate and bearer token over HTTPS",
       .enabled(if: opensslPath != nil && python3Path != nil, "openssl or python3 missing: skipped"))
struct TLSTests {
    @Test("Mutual TLS with an in-memory CA and client certificate from a kubeconfig; an untrusted server is refused")
    func mutualTLS() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kube-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = """
            set -e
            cd '\(directory)'
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=eaas-test-ca 2>/dev/null
            for who in server client; do
              openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=eaas-$who 2>/dev/null
            done
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile san.ext 2>/dev/null
            openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 1 2>/dev/null
            """
        let made = try await ClientProcess.run("/bin/bash", ["-c", script])
        try #require(made.status == 0, "\(made.combined)")
        let server = try StreamingProcess(python3Path!, [packageRoot + "/Tests/KubeTests/tls_server.py", directory])
        defer { server.terminate() }
        #expect(await eventually { Int(server.output.trimmingCharacters(in: .whitespacesAndNewlines)) != nil })
        let port = try #require(Int(server.output.trimmingCharacters(in: .whitespacesAndNewlines)))
        func base64(_ file: String) throws -> String { try Data(contentsOf: URL(fileURLWithPath: directory + "/" + file)).base64EncodedString() }

        let kubeconfig = """
            current-context: tls
            clusters: [{name: tls, cluster: {server: "https://127.0.0.1:\(port)", certificate-authority-data: \(try base64("ca.crt"))}}]
            users: [{name: me, user: {client-certificate-data: \(try base64("client.crt")), client-key-data: \(try base64("client.key")), token: t0k}}]
            contexts: [{name: tls, context: {cluster: tls, user: me}}]
            """
        var configuration = KubeClient.Configuration.testing
        configuration.maxRetries = 0
        let client = KubeClient(connection: try ClusterConnection.kubeconfig(yaml: kubeconfig), configuration: configuration)
        let answer = try await client.version()
        #expect(answer["clientCN"]?.string == "eaas-client")
        #expect(answer["authorization"]?.string == "Bearer t0k")

        // Without the CA the server's certificate is not trusted.
        var untrusted = try ClusterConnection.kubeconfig(yaml: kubeconfig)
        untrusted.certificateAuthority = nil
        await #expect { try await KubeClient(connection: untrusted, configuration: configuration).version() } throws: {
            guard case .transport = $0 as? KubeClientError else { return false }
            return true
        }
        // insecure-skip-tls-verify accepts it.
        untrusted.insecureSkipTLSVerify = true
        #expect(try await KubeClient(connection: untrusted, configuration: configuration).version()["clientCN"]?.string == "eaas-client")
    }
}
