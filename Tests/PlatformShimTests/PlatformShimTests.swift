import CPlatform
import ExpertPod
import Foundation
import Kube
import Testing
import Transport

@Suite("C library shims link and answer")
struct PlatformShimTests {
    @Test("libcurl and libyaml report their versions through the Kube module")
    func curlAndYamlVersions() {
        #expect(LibraryVersions.curl.hasPrefix("libcurl/"))
        #expect(LibraryVersions.yaml.split(separator: ".").count == 3)
    }

    @Test("the data plane's sleeps run with 1 µs timer slack on their thread (the default 50 µs overshot every short wait)")
    func preciseSleeps() throws {
        final class Slack: @unchecked Sendable { var before = -1, after = -1 }
        let slack = Slack()
        let thread = Thread {
            // A thread inherits its creator's slack (this test thread may have slept precisely
            // already): start from the kernel's default so that the sleep must set it.
            _ = eaas_set_timer_slack_ns(50_000)
            slack.before = eaas_timer_slack_ns()
            _ = eaas_sleep_ns(1000)
            slack.after = eaas_timer_slack_ns()
        }
        thread.start()
        let deadline = Date().addingTimeInterval(5)
        while slack.after < 0, Date() < deadline { usleep(1000) }
        #expect(slack.before == 50_000)
        #expect(slack.after == 1000)
    }

    @Test("Without an RDMA device the verbs device list fails with a clear error, or lists real devices")
    func rdmaDevicesAreListedOrExplained() {
        do {
            let names = try RDMADevices.names()
            #expect(!names.isEmpty)
        } catch let error as RDMADevices.Unavailable {
            #expect(error.description.contains("RDMA verbs transport unavailable"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}

@Suite("Shard specs")
struct ShardSpecTests {
    @Test("Expert lists, ranges and layer ranges parse", arguments: [
        ("0,1", [0, 1], nil as [Int]?, "0-1"),
        ("4-7@0-11", [4, 5, 6, 7], Array(0...11), "4-7@0-11"),
        ("3", [3], nil, "3"),
        ("0-2,5@1,3", [0, 1, 2, 5], [1, 3], "0-2,5@1,3"),
    ])
    func parses(text: String, experts: [Int], layers: [Int]?, canonical: String) throws {
        let spec = try ShardSpec(parsing: text)
        #expect(spec.experts == experts)
        #expect(spec.layers == layers)
        #expect(spec.description == canonical)
    }

    @Test("Malformed shard specs are refused with the offending part named", arguments: [
        ("", "empty list of experts"), ("a", "'a'"), ("3-1", "'3-1'"), ("1@", "empty list of layers"), ("1@2@3", "more than one '@'"), ("-1", "'-1'"),
    ])
    func refuses(text: String, fragment: String) {
        #expect {
            try ShardSpec(parsing: text)
        } throws: { error in
            "\(error)".contains(fragment)
        }
    }
}
