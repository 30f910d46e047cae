import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// A random event stream: people with an anonymous device, some of whom log in (linking the
/// device to their user id), doing random events with a random `src` property.
struct RandomStream {
    struct Event {
        var name: String
        var time: Int  // seconds
        var device: String?
        var user: String?
        var src: String?
        var revenue: Double?
        var seq: Int  // arrival order
    }

    var events: [Event] = []

    init(seed: UInt64, people: Int, names: [String]) {
        var rng = TestRNG(seed: seed)
        let base = 1_767_225_600
        var arrivals: [Event] = []
        for person in 0..<people {
            let device = "d\(person)"
            let user = "u\(person)"
            let logsIn = rng.below(3) > 0
            var clock = base + rng.below(7200)
            let count = 1 + rng.below(9)
            let loginAt = logsIn ? rng.below(count) : -1
            for index in 0..<count {
                // Mostly minutes apart, sometimes within the 2-second grace or at the same second.
                let roll = rng.below(10)
                clock += roll < 2 ? rng.below(3) : 30 + rng.below(1500)
                let name = names[rng.below(names.count)]
                let srcRoll = rng.below(4)
                let src = srcRoll == 0 ? nil : ["g", "f", "t"][srcRoll - 1]
                let afterLogin = logsIn && index >= loginAt
                arrivals.append(
                    Event(
                        name: name, time: clock, device: afterLogin && rng.below(2) == 0 ? nil : device,
                        user: afterLogin ? user : nil, src: src,
                        revenue: name == "C" ? Double(1 + rng.below(100)) : nil, seq: 0))
            }
        }
        // Arrival order: person by person, each person's events in time order.
        events = arrivals.enumerated().map { offset, event in
            var copy = event
            copy.seq = offset
            return copy
        }
    }

    /// Mixpanel import format, one object per event, in arrival order.
    func objects() -> [Any] {
        events.map { event in
            var properties: [String: Any] = ["time": event.time, "$insert_id": "e\(event.seq)"]
            if let device = event.device { properties["$device_id"] = device }
            if let user = event.user { properties["$user_id"] = user }
            if let src = event.src { properties["src"] = src }
            if let revenue = event.revenue { properties["revenue"] = revenue }
            return ["event": event.name, "properties": properties]
        }
    }

    /// Simplified ID Merge by brute force: the first event with both ids links the device.
    func resolvedPerson(_ event: Event) -> String {
        if let user = event.user { return user }
        let device = event.device!
        if let link = events.first(where: { $0.device == device && $0.user != nil }) { return link.user! }
        return "$device:" + device
    }
}

struct TestRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// The funnel rules of decisions.md, written plainly (no SQL): uniques, specific order,
/// loose, window from the first step-1 event, grace, re-entry after exit for breakdown
/// segments, breakdown from step 1.
func bruteForceFunnel(_ stream: RandomStream, steps: [String], window: Int, grace: Int, breakdown: Bool)
    -> (overall: [Int], segments: [String: [Int]])
{
    var overall = [Int](repeating: 0, count: steps.count)
    var segments: [String: [Int]] = [:]
    let people = Dictionary(grouping: stream.events, by: { stream.resolvedPerson($0) })
    for (_, personEvents) in people {
        let events = personEvents.sorted { ($0.time, $0.seq) < ($1.time, $1.seq) }
        var start = 0
        var first = true
        var seen: Set<String> = []
        while true {
            guard let entry = events.indices.first(where: { $0 >= start && events[$0].name == steps[0] }) else { break }
            var used: Set<Int> = [entry]
            var indexes = [entry]
            let deadline = events[entry].time + window
            for k in 1..<steps.count {
                let previous = events[indexes[k - 1]].time
                let candidate = events.indices.first { j in
                    j >= start && !used.contains(j) && events[j].name == steps[k] && events[j].time >= previous - grace
                        && events[j].time <= deadline
                }
                guard let candidate else { break }
                used.insert(candidate)
                indexes.append(candidate)
            }
            let reached = indexes.count
            if first {
                for k in 0..<reached { overall[k] += 1 }
            }
            let value = events[entry].src ?? "(not set)"
            if breakdown && !seen.contains(value) {
                seen.insert(value)
                var counts = segments[value] ?? [Int](repeating: 0, count: steps.count)
                for k in 0..<reached { counts[k] += 1 }
                segments[value] = counts
            }
            first = false
            if !breakdown { break }
            if reached == steps.count {
                start = indexes.max()! + 1
            } else if let next = events.indices.first(where: { $0 >= entry && events[$0].time > deadline }) {
                start = next
            } else {
                break
            }
        }
    }
    return (overall, segments)
}

/// Attribution by brute force for one model (decisions.md "Attribution").
func bruteForceAttribution(_ stream: RandomStream, model: AttributionQuery.Model, lookback: Int) -> [String: (
    Double, Double
)] {
    var credit: [String: (Double, Double)] = [:]
    func add(_ key: String, _ weight: Double, _ amount: Double) {
        let old = credit[key] ?? (0, 0)
        credit[key] = (old.0 + weight, old.1 + weight * amount)
    }
    let people = Dictionary(grouping: stream.events, by: { stream.resolvedPerson($0) })
    for (_, personEvents) in people {
        let events = personEvents.sorted { ($0.time, $0.seq) < ($1.time, $1.seq) }
        for (ci, conversion) in events.enumerated() where conversion.name == "C" {
            let amount = conversion.revenue ?? 0
            let touches = events.enumerated().filter { ti, touch in
                touch.src != nil && touch.time >= conversion.time - lookback && ti <= ci
            }.map { $0.element }
            let n = touches.count
            guard n > 0 else {
                add("(not set)", 1, amount)
                continue
            }
            func positional(_ first: Double, _ middle: Double, _ last: Double) -> [Double] {
                if n == 1 { return [1] }
                if n == 2 { return first + last == 0 ? [0.5, 0.5] : [first / (first + last), last / (first + last)] }
                return [first] + [Double](repeating: middle / Double(n - 2), count: n - 2) + [last]
            }
            var weights: [Double]
            switch model {
            case .firstTouch: weights = (0..<n).map { $0 == 0 ? 1 : 0 }
            case .lastTouch: weights = (0..<n).map { $0 == n - 1 ? 1 : 0 }
            case .linear: weights = [Double](repeating: 1 / Double(n), count: n)
            case .participation:
                var seen: Set<String> = []
                weights = touches.map { seen.insert($0.src!).inserted ? 1 : 0 }
            case .timeDecay:
                let raw = touches.map { pow(2, -Double(conversion.time - $0.time) / (7 * 86400)) }
                let sum = raw.reduce(0, +)
                weights = raw.map { $0 / sum }
            case .uShaped: weights = positional(0.4, 0.2, 0.4)
            case .jShaped: weights = positional(0.2, 0.2, 0.6)
            case .inverseJ: weights = positional(0.6, 0.2, 0.2)
            case .custom: weights = positional(0.5, 0.3, 0.2)
            }
            for (touch, weight) in zip(touches, weights) where weight > 0 { add(touch.src!, weight, amount) }
        }
    }
    return credit
}

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct ReportPropertyTests {
    /// On random streams, the funnel's counts equal the brute-force computation (uniques,
    /// specific order, with and without a breakdown), before and after the nightly job.
    @Test func funnelMatchesBruteForce() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            for seed in UInt64(1)...12 {
                let stream = RandomStream(seed: seed, people: 40, names: ["A", "B", "C", "X"])
                let project = try projectImporting(stream, name: "p\(seed)", on: db)
                for phase in ["before nightly", "after nightly"] {
                    if phase == "after nightly" {
                        _ = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
                    }
                    var query = FunnelQuery(steps: ["A", "B", "C"])
                    query.windowSeconds = 3600
                    let expected = bruteForceFunnel(stream, steps: query.steps, window: 3600, grace: 2, breakdown: true)
                    let plain = try FunnelReport.run(query, project: project, on: db)
                    #expect(plain.steps.map(\.count) == expected.overall, "seed \(seed) \(phase)")
                    query.breakdown = "src"
                    let broken = try FunnelReport.run(query, project: project, on: db)
                    #expect(
                        broken.steps.map(\.count) == expected.overall, "seed \(seed) \(phase) overall with breakdown")
                    let actual = Dictionary(
                        uniqueKeysWithValues: broken.breakdown.map { ($0.value, $0.steps.map(\.count)) })
                    #expect(actual == expected.segments, "seed \(seed) \(phase) segments")
                }
            }
        }
    }

    /// On random streams, every attribution model's credit equals the brute-force computation.
    @Test(arguments: AttributionQuery.Model.allCases)
    func attributionMatchesBruteForce(model: AttributionQuery.Model) throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            for seed in UInt64(20)...25 {
                let stream = RandomStream(seed: seed, people: 30, names: ["A", "B", "C"])
                let project = try projectImporting(stream, name: "p\(seed)", on: db)
                var query = AttributionQuery(conversion: "C", touchpoint: "src")
                query.valueProperty = "revenue"
                query.model = model
                query.lookbackSeconds = 1800
                if model == .custom { query.weights = [50, 30, 20] }
                let report = try AttributionReport.run(query, project: project, on: db)
                let expected = bruteForceAttribution(stream, model: model, lookback: 1800)
                let actual = Dictionary(uniqueKeysWithValues: report.rows.map { ($0.touchpoint, $0) })
                for (key, (conversions, value)) in expected where conversions > 1e-12 {
                    #expect(
                        abs((actual[key]?.conversions ?? 0) - conversions) < 1e-6, "seed \(seed) \(key) conversions")
                    #expect(abs((actual[key]?.value ?? 0) - value) < 1e-6, "seed \(seed) \(key) value")
                }
                for (key, row) in actual where (expected[key]?.0 ?? 0) < 1e-12 {
                    #expect(row.conversions < 1e-9, "seed \(seed) unexpected \(key)")
                }
            }
        }
    }
}
