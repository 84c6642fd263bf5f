import MoE
import Testing

@Suite("LoadTrace")
struct LoadTraceTests {
    @Test("linear traces interpolate rate and topic weights; steps hold; after the end the last rate holds")
    func interpolation() throws {
        let linear = try LoadTrace(points: [.init(seconds: 0, rate: 2, topicWeights: [1, 0]), .init(seconds: 10, rate: 12, topicWeights: [0, 1])],
                                   interpolation: .linear)
        #expect(linear.rate(at: 5) == 7)
        #expect(linear.topicWeights(at: 2.5) == [0.75, 0.25])
        #expect(linear.rate(at: 20) == 12)
        #expect(linear.meanRate == 7)
        #expect(abs(linear.idealSaving - (1 - 7.0 / 12)) < 1e-12)
        let steps = try LoadTrace.phases([(0, 2), (20, 8), (80, 2)])
        #expect(steps.rate(at: 19.9) == 2 && steps.rate(at: 20) == 8 && steps.rate(at: 1000) == 2)
    }

    @Test("the built-in day: a fifth of the peak at night, the peak in a burst, mean and ideal saving from its own shape, the topic ranking drifting")
    func diurnal() throws {
        let day = try LoadTrace.diurnal(duration: 600, peakRate: 10, topics: 4)
        #expect(abs(day.rate(at: 0) - 2) < 1e-9)
        #expect(day.peakRate == 10)
        #expect(day.idealSaving > 0.4 && day.idealSaving < 0.55, "\(day.idealSaving)")
        let hottest = { (t: Double) in day.topicWeights(at: t)!.indices.max { day.topicWeights(at: t)![$0] < day.topicWeights(at: t)![$1] }! }
        #expect(hottest(10) == 0 && hottest(300) == 1 && hottest(590) == 2)
        #expect(abs(day.topicWeights(at: 123)!.reduce(0, +) - 1) < 1e-9)
    }

    @Test("CSV traces: a header, comments and weights are read; bad rows are refused naming the line", arguments: [
        ("0,2\n10,abc\n", "line 2"),
        ("0,2,1,1\n10,3,1\n", "line 2: 1 topic weights, but the model has 2 topics"),
        ("0,2\n0,3\n", "does not come after"),
        ("5,2\n10,3\n", "starts at 0 s"),
        ("0,2\n10,-1\n", "rate -1.0 is not between 0 and 10000"),
        ("0,2\n", "at least two rows"),
        ("0,2,0,0\n10,3,1,1\n", "positive sum"),
    ])
    func csv(text: String, error: String) throws {
        var message = "accepted"
        do { _ = try LoadTrace.csv(text, topics: 2) } catch let refusal { message = refusal.description }
        #expect(message.contains(error), "\(message)")
        let good = try LoadTrace.csv("seconds,rps,w0,w1\n0,2,3,1 # night\n\n60,6,1,3\n", topics: 2)
        #expect(good.duration == 60 && good.rate(at: 30) == 4 && good.topicWeights(at: 0) == [0.75, 0.25])
    }
}
