import Foundation

/// A deterministic synthetic data set in Mixpanel's import format (NDJSON).
///
/// Shape: people arrive through campaign landings (`utm_source`, `utm_medium`,
/// `utm_campaign`) or directly, read blog posts, some sign up (the first event carrying
/// `$device_id` and `$user_id`), log in on other devices later, and buy (`revenue`).
/// Mixed in on purpose: shared devices (a second user logs in on a device that is already
/// linked), placeholder user ids (`undefined`, `null`), server-side events with only a
/// `$user_id`, late deliveries (an event sent after later ones) and duplicate deliveries
/// (the same `$insert_id` twice).
///
/// The same `events` and `seed` always give the same bytes. Times fall in the 90 days
/// before 2026-10-01T00:00:00Z.
public struct Generator {
    public var events: Int
    public var seed: UInt64
    /// The ID Merge API the data is written for. `original` writes what the SDKs send to
    /// such projects: the event's own `distinct_id` (a UUID v4 per device before login, the
    /// user id after) and an `$identify` event (`$identified_id`, `$anon_id`) the first time
    /// a device logs in; `legacy` is written like `simplified`.
    public var mode: IDMergeMode

    public init(events: Int, seed: UInt64, mode: IDMergeMode = .simplified) {
        self.events = events
        self.seed = seed
        self.mode = mode
    }

    /// A UUID v4 for a device name, the same every time.
    static func uuid(for device: String) -> String {
        var a = SplitMix64(seed: UInt64(bitPattern: fnv1a(device)))
        let hi = a.next()
        let lo = a.next()
        let hex = String(format: "%016llx%016llx", hi, lo)
        let chars = Array(hex)
        let variant = "89ab"[
            "89ab".index("89ab".startIndex, offsetBy: Int(lo % 4))]
        return String(chars[0..<8]) + "-" + String(chars[8..<12]) + "-4" + String(chars[13..<16]) + "-"
            + String(variant) + String(chars[17..<20]) + "-" + String(chars[20..<32])
    }

    static let start: Int64 = 1_759_276_800 - 90 * 86_400  // 2026-10-01 minus 90 days
    static let sources = ["google", "facebook", "newsletter", "twitter", "linkedin", "bing"]
    static let mediums = ["cpc", "social", "email", "social", "social", "cpc"]
    static let campaigns = ["spring_sale", "brand", "launch", "retargeting", "webinar"]
    static let posts = ["/blog/id-merge", "/blog/funnels", "/blog/attribution", "/blog/postgres", "/blog/pricing"]

    /// Writes the data set as NDJSON lines to `write`, in arrival order.
    public func generate(_ write: (String) throws -> Void) throws {
        var rng = SplitMix64(seed: seed)
        var emitted = 0
        var person = 0
        var delayed: [(release: Int, line: String)] = []
        var sharedDevices: [String] = []
        var identified: Set<String> = []

        func emit(_ line: String) throws {
            guard emitted < events else { return }
            try write(line)
            emitted += 1
        }

        while emitted < events {
            person += 1
            var lines: [String] = []
            var clock = Self.start + Int64(rng.next(below: 88 * 86_400))
            var sequence = 0
            func event(_ name: String, _ props: [(String, JSONLiteral)]) {
                sequence += 1
                clock += Int64(20 + rng.next(below: 600))
                var fields: [(String, JSONLiteral)] = [
                    ("time", .int(clock)), ("$insert_id", .string("g\(seed)-\(person)-\(sequence)")),
                ]
                guard mode == .original else {
                    fields.append(contentsOf: props)
                    lines.append(JSONLiteral.eventLine(name: name, properties: fields))
                    return
                }
                // Original API: the event names its own distinct_id; the first login of a
                // device sends $identify first, as the SDKs do.
                var device: String?
                var user: String?
                for (key, value) in props {
                    if case .string(let text) = value, key == "$device_id" { device = text }
                    // A placeholder user id (a client bug) identifies nobody: the SDK keeps the
                    // device's distinct_id.
                    if case .string(let text) = value, key == "$user_id", !EventRules.isPlaceholder(text) {
                        user = text
                    }
                }
                let rest = props.filter { $0.0 != "$device_id" && $0.0 != "$user_id" }
                if let device, let user, !identified.contains(device) {
                    identified.insert(device)
                    lines.append(
                        JSONLiteral.eventLine(
                            name: "$identify",
                            properties: [
                                ("time", .int(clock)), ("$insert_id", .string("g\(seed)-\(person)-\(sequence)-id")),
                                ("distinct_id", .string(user)), ("$identified_id", .string(user)),
                                ("$anon_id", .string(Self.uuid(for: device))),
                            ]))
                }
                let own = user ?? device.map(Self.uuid(for:)) ?? "unknown"
                fields.append(("distinct_id", .string(own)))
                fields.append(contentsOf: rest)
                lines.append(JSONLiteral.eventLine(name: name, properties: fields))
            }
            let device = "d\(person)-\(rng.next(below: 1_000_000))"
            let user = "user_\(person)"
            let campaignIndex = rng.next(below: 10)
            var utm: [(String, JSONLiteral)] = []
            if campaignIndex < 7 {
                let s = rng.next(below: Self.sources.count)
                utm = [
                    ("utm_source", .string(Self.sources[s])), ("utm_medium", .string(Self.mediums[s])),
                    ("utm_campaign", .string(Self.campaigns[rng.next(below: Self.campaigns.count)])),
                ]
            }
            // Landing.
            event("Page View", [("$device_id", .string(device)), ("page", .string("/"))] + utm)
            for _ in 0..<rng.next(below: 4) {
                event("Page View", [("$device_id", .string(device)), ("page", .string("/features"))])
            }
            if rng.next(below: 10) < 5 {
                for _ in 0..<(1 + rng.next(below: 3)) {
                    let post = Self.posts[rng.next(below: Self.posts.count)]
                    event("Blog Read", [("$device_id", .string(device)), ("post", .string(post))])
                }
            }
            let signsUp = rng.next(below: 10) < 4
            if signsUp {
                if rng.next(below: 200) == 0 {
                    // A client bug: a placeholder user id links nothing.
                    event("Sign Up", [("$device_id", .string(device)), ("$user_id", .string("undefined"))])
                } else {
                    event("Sign Up", [("$device_id", .string(device)), ("$user_id", .string(user))] + utm)
                    if rng.next(below: 10) < 6 {
                        let amount = 10 + rng.next(below: 190)
                        event(
                            "Purchase",
                            [("$user_id", .string(user)), ("revenue", .double(Double(amount) + 0.99))])
                    }
                    // Later, another device: anonymous first, then a login that links it.
                    if rng.next(below: 10) < 3 {
                        clock += Int64(rng.next(below: 7 * 86_400))
                        let second = "d\(person)-m\(rng.next(below: 1_000_000))"
                        let s = rng.next(below: Self.sources.count)
                        event(
                            "Page View",
                            [
                                ("$device_id", .string(second)), ("page", .string("/")),
                                ("utm_source", .string(Self.sources[s])),
                                ("utm_campaign", .string(Self.campaigns[rng.next(below: Self.campaigns.count)])),
                            ])
                        event("Login", [("$device_id", .string(second)), ("$user_id", .string(user))])
                        if rng.next(below: 10) < 5 {
                            let amount = 10 + rng.next(below: 190)
                            event(
                                "Purchase",
                                [
                                    ("$device_id", .string(second)), ("$user_id", .string(user)),
                                    ("revenue", .double(Double(amount) + 0.49)),
                                ])
                        }
                        sharedDevices.append(second)
                        if sharedDevices.count > 64 { sharedDevices.removeFirst() }
                    }
                    // A shared device: this user logs in on someone else's linked device.
                    if rng.next(below: 50) == 0, let shared = sharedDevices.first {
                        event("Login", [("$device_id", .string(shared)), ("$user_id", .string(user))])
                    }
                }
            }
            // Arrival: a few events arrive late, a few twice.
            for line in lines {
                let roll = rng.next(below: 100)
                if roll < 2 {
                    delayed.append((person + 1 + rng.next(below: 5), line))
                } else {
                    try emit(line)
                    if roll < 3 { try emit(line) }
                }
            }
            let due = delayed.filter { $0.release <= person }
            delayed.removeAll { $0.release <= person }
            for item in due { try emit(item.line) }
        }
    }
}

/// The generator's pseudo-random numbers: SplitMix64 (Steele, Lea and Flood, 2014), small,
/// fast and the same on every platform.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func next(below bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// Just enough JSON writing for generated events, with keys in the order given.
enum JSONLiteral {
    case string(String)
    case int(Int64)
    case double(Double)

    var text: String {
        switch self {
        case .string(let s): return JSONLiteral.quote(s)
        case .int(let i): return String(i)
        case .double(let d): return String(format: "%.2f", d)
        }
    }

    static func quote(_ s: String) -> String {
        var out = ""
        ReportJSON.writeString(s, to: &out)
        return out
    }

    static func eventLine(name: String, properties: [(String, JSONLiteral)]) -> String {
        let body = properties.map { "\(quote($0.0)):\($0.1.text)" }.joined(separator: ",")
        return "{\"event\":\(quote(name)),\"properties\":{\(body)}}"
    }
}
