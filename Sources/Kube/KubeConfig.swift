import Foundation
import JSON

/// Where the API server is and how to authenticate to it: what a kubeconfig context or a pod's
/// service account resolves to.
public struct ClusterConnection: Sendable, Equatable {
    /// Base URL, e.g. `https://10.0.0.1:443`, without a trailing slash.
    public var server: String
    /// PEM certificates trusted for the server (`certificate-authority(-data)`); nil: the system's.
    public var certificateAuthority: [UInt8]?
    /// PEM client certificate and key, for mutual TLS.
    public var clientCertificate: [UInt8]?
    public var clientKey: [UInt8]?
    /// A bearer token given inline.
    public var bearerToken: String?
    /// A file holding the bearer token, read again every minute (projected service-account tokens rotate).
    public var bearerTokenFile: String?
    public var username: String?
    public var password: String?
    /// Skip verifying the server's certificate (`insecure-skip-tls-verify`).
    public var insecureSkipTLSVerify: Bool
    /// The name the server's certificate must carry, when it differs from the URL's host.
    public var tlsServerName: String?
    /// The namespace used when a call names none.
    public var namespace: String

    public init(server: String, certificateAuthority: [UInt8]? = nil, clientCertificate: [UInt8]? = nil,
                clientKey: [UInt8]? = nil, bearerToken: String? = nil, bearerTokenFile: String? = nil,
                username: String? = nil, password: String? = nil, insecureSkipTLSVerify: Bool = false,
                tlsServerName: String? = nil, namespace: String = "default") {
        var server = server
        while server.hasSuffix("/") { server.removeLast() }
        self.server = server
        self.certificateAuthority = certificateAuthority
        self.clientCertificate = clientCertificate
        self.clientKey = clientKey
        self.bearerToken = bearerToken
        self.bearerTokenFile = bearerTokenFile
        self.username = username
        self.password = password
        self.insecureSkipTLSVerify = insecureSkipTLSVerify
        self.tlsServerName = tlsServerName
        self.namespace = namespace
    }
}

/// Why a kubeconfig or the in-cluster configuration could not be used; the message names the missing piece.
public struct KubeConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension ClusterConnection {
    /// The connection a user expects with no flags, as kubectl and client-go find it: the files in
    /// `$KUBECONFIG` (merged, first wins), else `~/.kube/config`, else the pod's service account.
    public static func automatic(context: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws(KubeConfigError) -> ClusterConnection {
        if let paths = environment["KUBECONFIG"]?.split(separator: ":").map(String.init).filter({ !$0.isEmpty }), !paths.isEmpty {
            return try kubeconfig(paths: paths, context: context)
        }
        let home = environment["HOME"] ?? NSHomeDirectory()
        let defaultPath = home + "/.kube/config"
        if FileManager.default.fileExists(atPath: defaultPath) { return try kubeconfig(paths: [defaultPath], context: context) }
        if environment["KUBERNETES_SERVICE_HOST"] != nil { return try inCluster(environment: environment) }
        throw KubeConfigError("no Kubernetes configuration: $KUBECONFIG is unset, \(defaultPath) does not exist, and KUBERNETES_SERVICE_HOST is unset (not in a pod)")
    }

    /// A pod's own credentials: `KUBERNETES_SERVICE_HOST`/`_PORT`, and the service-account token,
    /// CA and namespace mounted under `root`.
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 root: String = "/var/run/secrets/kubernetes.io/serviceaccount") throws(KubeConfigError) -> ClusterConnection {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty else {
            throw KubeConfigError("in-cluster configuration: KUBERNETES_SERVICE_HOST is not set (not running in a pod?)")
        }
        guard let port = environment["KUBERNETES_SERVICE_PORT"], !port.isEmpty else {
            throw KubeConfigError("in-cluster configuration: KUBERNETES_SERVICE_PORT is not set")
        }
        let tokenPath = root + "/token", caPath = root + "/ca.crt"
        guard FileManager.default.isReadableFile(atPath: tokenPath) else {
            throw KubeConfigError("in-cluster configuration: no service-account token at \(tokenPath)")
        }
        guard let ca = FileManager.default.contents(atPath: caPath) else {
            throw KubeConfigError("in-cluster configuration: no service-account CA certificate at \(caPath)")
        }
        let namespace = (try? String(contentsOfFile: root + "/namespace", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let hostPart = host.contains(":") ? "[\(host)]" : host  // IPv6
        return ClusterConnection(server: "https://\(hostPart):\(port)", certificateAuthority: Array(ca),
                                 bearerTokenFile: tokenPath, namespace: namespace.flatMap { $0.isEmpty ? nil : $0 } ?? "default")
    }

    /// The connection of `context` (default: `current-context`) in the kubeconfig files at `paths`,
    /// merged as kubectl merges them: the first file to name a cluster, user or context wins.
    public static func kubeconfig(paths: [String], context: String? = nil) throws(KubeConfigError) -> ClusterConnection {
        var merged = KubeconfigFile()
        // As kubectl: files of the list that do not exist are skipped; one that exists must be readable.
        let existing = paths.filter { FileManager.default.fileExists(atPath: $0) }
        guard !existing.isEmpty else { throw KubeConfigError("kubeconfig: none of \(paths.joined(separator: ", ")) exists") }
        for path in existing {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw KubeConfigError("kubeconfig \(path): cannot be read")
            }
            let document: JSONValue
            do { document = try YAML.parse(String(decoding: data, as: UTF8.self)) } catch {
                throw KubeConfigError("kubeconfig \(path): \(error)")
            }
            try merged.merge(document, from: path)
        }
        return try merged.connection(context: context)
    }

    /// The connection of `context` in one kubeconfig document given as text (relative file paths
    /// resolve against `directory`).
    public static func kubeconfig(yaml: String, context: String? = nil, directory: String = ".") throws(KubeConfigError) -> ClusterConnection {
        var file = KubeconfigFile()
        let document: JSONValue
        do { document = try YAML.parse(yaml) } catch { throw KubeConfigError("kubeconfig: \(error)") }
        try file.merge(document, from: directory + "/kubeconfig")
        return try file.connection(context: context)
    }
}

/// The named entries of one or more kubeconfig files, each remembering the directory of its file.
private struct KubeconfigFile {
    struct Entry { let fields: JSONValue; let directory: String; let source: String }
    var clusters: [String: Entry] = [:]
    var users: [String: Entry] = [:]
    var contexts: [String: Entry] = [:]
    var currentContext: String?

    mutating func merge(_ document: JSONValue, from path: String) throws(KubeConfigError) {
        guard case .object = document else { throw KubeConfigError("kubeconfig \(path): not a YAML mapping") }
        let directory = (path as NSString).deletingLastPathComponent
        for (section, field) in [("clusters", "cluster"), ("users", "user"), ("contexts", "context")] {
            for item in document[section]?.array ?? [] {
                guard let name = item["name"]?.string else { throw KubeConfigError("kubeconfig \(path): an entry of \(section) has no name") }
                let entry = Entry(fields: item[field] ?? .object([:]), directory: directory, source: path)
                switch section {
                case "clusters": if clusters[name] == nil { clusters[name] = entry }
                case "users": if users[name] == nil { users[name] = entry }
                default: if contexts[name] == nil { contexts[name] = entry }
                }
            }
        }
        if currentContext == nil, let current = document["current-context"]?.string, !current.isEmpty { currentContext = current }
    }

    func connection(context requested: String?) throws(KubeConfigError) -> ClusterConnection {
        guard let contextName = requested ?? currentContext else {
            throw KubeConfigError("kubeconfig: no current-context is set and no context was given")
        }
        guard let context = contexts[contextName] else { throw KubeConfigError("kubeconfig: context \"\(contextName)\" not found") }
        guard let clusterName = context.fields["cluster"]?.string else {
            throw KubeConfigError("kubeconfig: context \"\(contextName)\" names no cluster")
        }
        guard let cluster = clusters[clusterName] else { throw KubeConfigError("kubeconfig: cluster \"\(clusterName)\" (of context \"\(contextName)\") not found") }
        guard let server = cluster.fields["server"]?.string, !server.isEmpty else {
            throw KubeConfigError("kubeconfig: cluster \"\(clusterName)\" has no server")
        }
        var connection = ClusterConnection(server: server)
        connection.insecureSkipTLSVerify = cluster.fields["insecure-skip-tls-verify"]?.bool ?? false
        connection.tlsServerName = cluster.fields["tls-server-name"]?.string
        connection.certificateAuthority = try material(cluster, data: "certificate-authority-data", file: "certificate-authority", what: "cluster \"\(clusterName)\"")
        if let namespace = context.fields["namespace"]?.string, !namespace.isEmpty { connection.namespace = namespace }
        if let userName = context.fields["user"]?.string, !userName.isEmpty {
            guard let user = users[userName] else { throw KubeConfigError("kubeconfig: user \"\(userName)\" (of context \"\(contextName)\") not found") }
            let what = "user \"\(userName)\""
            connection.clientCertificate = try material(user, data: "client-certificate-data", file: "client-certificate", what: what)
            connection.clientKey = try material(user, data: "client-key-data", file: "client-key", what: what)
            if (connection.clientCertificate == nil) != (connection.clientKey == nil) {
                throw KubeConfigError("kubeconfig: \(what) has a client \(connection.clientKey == nil ? "certificate but no client key" : "key but no client certificate")")
            }
            connection.bearerToken = user.fields["token"]?.string
            if let tokenFile = user.fields["tokenFile"]?.string {
                // As client-go: the file, re-read as it rotates, wins over an inline token.
                connection.bearerToken = nil
                let path = resolve(tokenFile, in: user.directory)
                guard FileManager.default.isReadableFile(atPath: path) else { throw KubeConfigError("kubeconfig: \(what): tokenFile \(path) cannot be read") }
                connection.bearerTokenFile = path
            }
            connection.username = user.fields["username"]?.string
            connection.password = user.fields["password"]?.string
            if user.fields["exec"] != nil || user.fields["auth-provider"] != nil {
                if connection.bearerToken == nil && connection.bearerTokenFile == nil && connection.clientCertificate == nil {
                    let plugin = user.fields["exec"]?["command"]?.string ?? user.fields["auth-provider"]?["name"]?.string ?? "?"
                    throw KubeConfigError("kubeconfig: \(what) authenticates through a credential plugin (\(plugin)), which eaas does not run; give it a token, tokenFile or client certificate")
                }
            }
        }
        return connection
    }

    /// PEM material given inline (base64 in `data`) or as a file path (relative to the kubeconfig's folder).
    private func material(_ entry: Entry, data: String, file: String, what: String) throws(KubeConfigError) -> [UInt8]? {
        if let encoded = entry.fields[data]?.string {
            guard let decoded = Data(base64Encoded: encoded.filter { !$0.isWhitespace }) else {
                throw KubeConfigError("kubeconfig: \(what): \(data) is not valid base64")
            }
            return Array(decoded)
        }
        if let path = entry.fields[file]?.string {
            let resolved = resolve(path, in: entry.directory)
            guard let contents = FileManager.default.contents(atPath: resolved) else {
                throw KubeConfigError("kubeconfig: \(what): \(file) \(resolved) cannot be read")
            }
            return Array(contents)
        }
        return nil
    }

    private func resolve(_ path: String, in directory: String) -> String {
        if path.hasPrefix("/") { return path }
        if path.hasPrefix("~/") { return NSHomeDirectory() + String(path.dropFirst(1)) }
        return directory + "/" + path
    }
}
