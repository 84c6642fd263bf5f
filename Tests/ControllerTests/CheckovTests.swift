import Controller
import Foundation
import JSON
import Kube
import Testing

/// checkov, as scripts/install-test-clients pins it (in its own virtual environment), if installed.
let checkovExecutable: String? = {
    let path = "\(packageRoot)/.venv/checkov/bin/checkov"
    return FileManager.default.isExecutableFile(atPath: path) ? path : nil
}()

/// What one checkov run found (its JSON report, `-o json`).
struct CheckovReport: CustomStringConvertible {
    var passed = 0
    var failed = 0
    var skipped = 0
    var parsingErrors = 0
    var resources = 0
    /// `CHECK_ID name: resource in file:lines`, one per failed check.
    var failures: [String] = []
    /// One per check skipped by an annotation.
    var skips: [(check: String, resource: String, reason: String)] = []

    init(json: JSONValue) {
        // One framework gives one report object; several, a list of them.
        for report in json.array ?? [json] {
            let summary = report["summary"] ?? report
            passed += summary["passed"]?.int ?? 0
            failed += summary["failed"]?.int ?? 0
            skipped += summary["skipped"]?.int ?? 0
            parsingErrors += summary["parsing_errors"]?.int ?? 0
            resources += summary["resource_count"]?.int ?? 0
            for check in report[path: ["results", "failed_checks"]]?.array ?? [] {
                let lines = check["file_line_range"]?.array?.compactMap(\.int).map(String.init).joined(separator: "-") ?? ""
                failures.append("\(check["check_id"]?.string ?? "?") \(check["check_name"]?.string ?? ""): "
                    + "\(check["resource"]?.string ?? "?") in \(check["file_path"]?.string ?? "?"):\(lines)")
            }
            for check in report[path: ["results", "skipped_checks"]]?.array ?? [] {
                skips.append((check["check_id"]?.string ?? "?", check["resource"]?.string ?? "?",
                              check[path: ["check_result", "suppress_comment"]]?.string ?? ""))
            }
        }
    }

    var description: String {
        "\(resources) resources: \(passed) passed, \(failed) failed, \(skipped) skipped"
            + skips.map { "\n  skipped \($0.check) \($0.resource): \($0.reason)" }.joined() + failures.map { "\n  FAILED \($0)" }.joined()
    }
}

struct CheckovError: Error, CustomStringConvertible {
    let description: String
}

/// checkov's Kubernetes checks on what we ship: `Manifests/`, the chart rendered with its defaults
/// and with its NetworkPolicies on, and the expert-pod Deployments the controller writes for the
/// sample pool. None may fail; what does not apply is skipped with its reason, in an annotation
/// (`checkov.io/skipN: CHECK=reason`) on the object, or below where no file carries the object.
@Suite("checkov on Manifests, the chart and the controller's expert pods", .serialized,
       .enabled(if: checkovExecutable != nil, "checkov is not installed in .venv/checkov (scripts/install-test-clients installs it)"))
struct CheckovTests {
    /// Runs checkov on `directory`, skipping `skipping` (check ids) besides the annotations.
    static func scan(_ directory: String, skipping: [String] = []) async throws -> CheckovReport {
        guard let checkov = checkovExecutable else { throw CheckovError(description: "checkov is not installed") }
        let output = NSTemporaryDirectory() + "eaas-checkov-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: output) }
        var arguments = ["-d", directory, "--framework", "kubernetes", "-o", "json", "--output-file-path", output,
                         "--compact", "--skip-download"]
        if !skipping.isEmpty { arguments += ["--skip-check", skipping.joined(separator: ",")] }
        let started = ContinuousClock.now
        let tool = try ToolProcess(checkov, arguments, environment: ["CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"], directory: output)
        let status = await tool.exit(timeout: .seconds(240))
        let elapsed = ContinuousClock.now - started
        // 0: nothing failed; 1: some check failed (the report says which).
        guard status == 0 || status == 1, let data = FileManager.default.contents(atPath: "\(output)/results_json.json") else {
            throw CheckovError(description: "checkov on \(directory) exited \(status) after \(elapsed) without a report:\n\(tool.output.suffix(4000))")
        }
        let report = CheckovReport(json: try JSONValue.parse(data))
        print("checkov \(directory) (\(elapsed)): \(report)")
        return report
    }

    /// The checks an annotation may skip (Manifests/README.md says why for each); any other skip
    /// fails, so that a new exception is a decision made here.
    static let acceptedSkips: Set<String> = [
        "CKV_K8S_38",  // the controller and the worker are API clients: they need their token
        "CKV_K8S_43",  // the image digest is pinned when a release is pushed
        "CKV_K8S_15",  // IfNotPresent, right with an immutable release tag or a digest
    ]

    static func expectClean(_ report: CheckovReport, _ target: String) {
        #expect(report.resources > 0, "checkov found nothing to check in \(target)")
        #expect(report.parsingErrors == 0, "checkov could not parse \(report.parsingErrors) files of \(target)")
        #expect(report.failed == 0 && report.failures.isEmpty, "checkov failures in \(target):\n\(report.failures.joined(separator: "\n"))")
        for skip in report.skips {
            #expect(acceptedSkips.contains(skip.check), "\(target): \(skip.check) is skipped on \(skip.resource), which is not an accepted exception")
            #expect(!skip.reason.isEmpty && skip.reason != "No comment provided", "\(target): \(skip.check) is skipped on \(skip.resource) without its reason")
        }
    }

    /// A fresh temporary directory, removed by the caller.
    static func directory(_ name: String) throws -> String {
        let path = NSTemporaryDirectory() + "eaas-checkov-\(name)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The chart's templates rendered into `directory`, a file for each template that renders an object.
    static func renderChart(into directory: String, values override: (inout JSONValue) -> Void = { _ in }) throws {
        let renderer = try ShippingTests.renderer(values: override)
        let templates = "\(packageRoot)/charts/eaas/templates"
        for file in try FileManager.default.contentsOfDirectory(atPath: templates).filter({ $0.hasSuffix(".yaml") }).sorted() {
            let text = try renderer.render(String(contentsOfFile: "\(templates)/\(file)", encoding: .utf8))
            guard try YAML.parseDocuments(text).contains(where: { $0 != .null }) else { continue }
            try text.write(toFile: "\(directory)/\(file)", atomically: true, encoding: .utf8)
        }
    }

    @Test("Manifests/: nothing fails; skips are annotated with their reason")
    func manifests() async throws {
        Self.expectClean(try await Self.scan("\(packageRoot)/Manifests"), "Manifests")
    }

    @Test("the chart with its default values: nothing fails")
    func chartDefaults() async throws {
        let directory = try Self.directory("chart")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.renderChart(into: directory)
        // CKV2_K8S_6 (pods without a NetworkPolicy): the chart's NetworkPolicies are off by default,
        // as they need a network plugin that enforces them; `chartWithNetworkPolicies` shows they
        // cover the controller when on.
        Self.expectClean(try await Self.scan(directory, skipping: ["CKV2_K8S_6"]), "the chart's default render")
    }

    @Test("the chart with networkPolicy.enabled and a watched namespace (pool-token Role, expert-pod policy): nothing fails")
    func chartWithNetworkPolicies() async throws {
        let directory = try Self.directory("chart-policies")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Self.renderChart(into: directory) { values in
            values[path: ["networkPolicy", "enabled"]] = true
            values[path: ["controller", "watchNamespace"]] = "eaas-samples"
            values[path: ["controller", "poolTokenSecrets"]] = ["tiny-pool-token"]
        }
        let report = try await Self.scan(directory)
        Self.expectClean(report, "the chart's render with networkPolicy.enabled")
    }

    @Test("the expert-pod Deployments the controller writes for the sample pool, beside the shipped expert-pod NetworkPolicy: nothing fails")
    func expertPods() async throws {
        let directory = try Self.directory("expert-pods")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let deployments = try SampleObjects.expertDeployments()
        try deployments.map(\.yaml).joined(separator: "---\n").write(toFile: "\(directory)/deployments.yaml", atomically: true, encoding: .utf8)
        // In the cluster the pods are under the namespace's policy (CKV2_K8S_6 looks for it).
        try FileManager.default.copyItem(atPath: "\(packageRoot)/Manifests/network-policies/expert-pods.yaml", toPath: "\(directory)/expert-pods.yaml")
        // The controller writes the image and pull policy it is given (spec.template.image and
        // imagePullPolicy, else --expert-image), and no file carries these objects to annotate:
        // CKV_K8S_43 (image digest) and CKV_K8S_15 (pull policy Always) are skipped for the same
        // reason as on the controller and the worker: a release image is pinned by digest when it
        // is pushed, and IfNotPresent is right for an immutable tag or a digest.
        let report = try await Self.scan(directory, skipping: ["CKV_K8S_43", "CKV_K8S_15"])
        Self.expectClean(report, "the controller's expert-pod Deployments")
        #expect(report.resources >= deployments.count)
    }
}
