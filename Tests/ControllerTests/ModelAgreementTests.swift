import Testing
@testable import Controller

@Suite("ModelsAgree: one checkpoint per pool, or the pods that differ named")
struct ModelAgreementTests {
    typealias Pod = ModelAgreement.Pod

    @Test("verdicts", arguments: [
        ([Pod](), ConditionStatus.unknown, "NotRead", "no ready pod"),
        ([Pod(name: "a", digest: nil)], .unknown, "NotRead", "has been read yet"),
        ([Pod(name: "a", digest: "0123456789abcdef0123"), Pod(name: "b", digest: "0123456789abcdef0123")], .true, "OneModel", "2 ready pods serve model 0123456789ab…"),
        ([Pod(name: "a", digest: "d0"), Pod(name: "b", digest: nil)], .true, "OneModel", "1 ready pod serves model d0; 1 not read yet"),
        ([Pod(name: "a", digest: "d0"), Pod(name: "b", digest: "d0"), Pod(name: "c", digest: "e1")], .false, "MixedModels",
         "ready pods serve 2 different checkpoints: d0 (2 pods: a, b); e1 (1 pod: c); a worker uses only the pods of its own model"),
        ((0..<5).map { Pod(name: "p\($0)", digest: "x") } + [Pod(name: "q", digest: "y")], .false, "MixedModels", "x (5 pods: p0, p1, p2, …); y (1 pod: q)"),
    ])
    func verdict(pods: [Pod], status: ConditionStatus, reason: String, words: String) {
        let verdict = ModelAgreement.verdict(pods)
        #expect(verdict.status == status)
        #expect(verdict.reason == reason)
        #expect(verdict.message.contains(words), "\(verdict.message)")
    }

    @Test("the digest is read from eaas_model_info; a label that is not a plain value is ignored")
    func digestLabel() throws {
        let text = "eaas_expert_tokens_total{layer=\"1\",expert=\"0\"} 5\neaas_model_info{digest=\"9f8e7d\"} 1\n"
        #expect(try #require(PodCounters(prometheusText: text)).modelDigest == "9f8e7d")
        let odd = "eaas_expert_tokens_total 5\neaas_model_info{digest=\"a\\\"b\"} 1\n"
        #expect(try #require(PodCounters(prometheusText: odd)).modelDigest == nil)
        #expect(try #require(PodCounters(prometheusText: "eaas_expert_tokens_total 5\n")).modelDigest == nil)
    }
}
