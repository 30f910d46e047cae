import Foundation

/// The ingestion rules of decisions.md ("Ingestion", "Simplified API"), applied to one
/// scanned record: what is refused, what is ignored, and the identifiers an accepted event
/// is ingested under.
public struct EventRules: Sendable {
    /// Earliest accepted event time: 1971-01-01T00:00:00Z, in milliseconds (Mixpanel V2).
    public static let earliestMillis: Int64 = 31_536_000_000
    /// Latest accepted event time, relative to the import: one hour ahead (Mixpanel V2).
    public static let futureToleranceMillis: Int64 = 3_600_000
    /// Largest accepted event, in bytes of JSON (decisions.md: 1 MB).
    public static let maxEventBytes = 1 << 20
    /// Longest accepted `$insert_id`, in bytes.
    public static let maxInsertIdBytes = 255
    /// Longest accepted event name and identifier (`$user_id`, `$device_id`,
    /// `distinct_id`), in bytes: they are index keys, which PostgreSQL caps at about 2.7 kB.
    public static let maxKeyBytes = 1000
    /// Times above this are milliseconds, below it seconds (decisions.md).
    public static let millisecondThreshold: Double = 1e11

    /// The `properties` members ingest reads.
    public static let wantedProperties: Set<String> = [
        "time", "$insert_id", "$user_id", "$device_id", "distinct_id", "$ignore", "token",
        "$identified_id", "$anon_id", "$anon_distinct_id", "alias", "$distinct_ids",
    ]

    /// The mode the project runs, which decides how the ingested distinct_id is derived.
    public var mode: IDMergeMode
    /// The moment of import, in milliseconds since the epoch (UTC).
    public var nowMillis: Int64

    public init(mode: IDMergeMode, nowMillis: Int64) {
        self.mode = mode
        self.nowMillis = nowMillis
    }

    /// Placeholder values that are never identifiers: Mixpanel's V3 list joined with
    /// PostHog's, matched case-insensitively after trimming and unquoting (decisions.md).
    public static let placeholders: Set<String> = [
        "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a", "na",
        "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}", "guest", "distinctid",
        "distinct_id", "id", "not_authenticated", "email", "[object object]", "nan",
    ]

    /// True when `value` is blank or a placeholder such as `undefined`, `'null'` or `[object Object]`,
    /// also behind a `$device:` prefix (`$device:undefined`).
    public static func isPlaceholder(_ value: String) -> Bool {
        var copy = value
        return copy.withUTF8 { bytes in
            var lower = 0
            var upper = bytes.count
            func isSpace(_ b: UInt8) -> Bool { b == 0x20 || (b >= 0x09 && b <= 0x0D) }
            // Trim, unquote and drop a `$device:` prefix, as often as they nest: a placeholder
            // behind the prefix ("$device:undefined", "'$device:null'") is no id either.
            while true {
                while lower < upper, isSpace(bytes[lower]) { lower += 1 }
                while upper > lower, isSpace(bytes[upper - 1]) { upper -= 1 }
                if upper - lower >= 2, bytes[lower] == bytes[upper - 1],
                    bytes[lower] == UInt8(ascii: "\"") || bytes[lower] == UInt8(ascii: "'")
                {
                    lower += 1
                    upper -= 1
                } else if upper - lower >= devicePrefix.count,
                    devicePrefix.indices.allSatisfy({ bytes[lower + $0] == devicePrefix[$0] })
                {
                    lower += devicePrefix.count
                } else {
                    break
                }
            }
            if lower == upper { return true }
            if bytes[lower..<upper].contains(where: { $0 >= 0x80 }) {
                // Non-ASCII text: trim Unicode spaces (a no-break space is blank too), then compare.
                let text = String(decoding: bytes[lower..<upper], as: UTF8.self)
                    .trimmingCharacters(in: .whitespacesAndNewlines.union(.controlCharacters))
                if text.isEmpty { return true }
                return text.count <= 36 && placeholders.contains(text.lowercased())
            }
            // The longest placeholder is 36 bytes; anything longer is an identifier.
            guard upper - lower <= 36 else { return false }
            let text = UnsafeBufferPointer(rebasing: bytes[lower..<upper])
            for candidate in placeholderBytes[text.count] where candidate.count == text.count {
                var equal = true
                for k in 0..<text.count {
                    let b = text[k]
                    if (b >= 0x41 && b <= 0x5A ? b + 0x20 : b) != candidate[k] {
                        equal = false
                        break
                    }
                }
                if equal { return true }
            }
            return false
        }
    }

    /// The prefix of a device's distinct_id (S-R3), as bytes.
    static let devicePrefix = Array("$device:".utf8)

    /// `placeholders` as bytes, by length (the ASCII ones; all of them are).
    static let placeholderBytes: [[[UInt8]]] = {
        var byLength: [[[UInt8]]] = Array(repeating: [], count: 37)
        for placeholder in placeholders { byLength[placeholder.utf8.count].append(Array(placeholder.utf8)) }
        return byLength
    }()

    /// True when `text` is empty once Unicode white space and newlines are trimmed.
    static func isBlank(_ text: String) -> Bool {
        // Any ASCII byte other than white space is a character that trimming keeps.
        if text.utf8.contains(where: { $0 < 0x80 && $0 != 0x20 && ($0 < 0x09 || $0 > 0x0D) }) { return false }
        return text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
    }

    /// An event accepted for storage.
    public struct Accepted: Equatable {
        public var event: String
        public var timeMillis: Int64
        public var insertId: String?
        public var ingestedDistinctId: String
        public var deviceId: String?
        public var userId: String?
        /// `errInvalidIdentifier` when a placeholder identifier was dropped.
        public var warning: String?
    }

    /// What happens to a record.
    public enum Outcome: Equatable {
        case accept(Accepted)
        /// `$ignore` (Mixpanel V8): counted, not stored.
        case ignore
        case refuse(field: String, reason: String)
    }

    /// Applies the rules to a scanned record.
    public func apply(_ record: ScannedRecord) -> Outcome {
        guard case .string(let event)? = record.event else {
            if record.event == nil { return .refuse(field: "event", reason: "missing: every event needs a name") }
            return .refuse(field: "event", reason: "must be a string")
        }
        guard !Self.isBlank(event) else {
            return .refuse(field: "event", reason: "must not be empty")
        }
        guard event.utf8.count <= Self.maxKeyBytes else {
            return .refuse(field: "event", reason: "longer than \(Self.maxKeyBytes) bytes")
        }
        guard record.propertiesRange != nil else {
            if record.propertiesKind == nil {
                return .refuse(field: "properties", reason: "missing: every event needs properties")
            }
            return .refuse(field: "properties", reason: "must be a JSON object")
        }
        let fields = record.fields
        if let ignore = fields["$ignore"], ignore != .null, ignore != .bool(false) { return .ignore }

        // time (Mixpanel V2; decisions.md: seconds, or milliseconds above 1e11).
        guard let timeValue = fields["time"] else {
            return .refuse(field: "properties.time", reason: "missing: must be specified as seconds since epoch")
        }
        guard case .number(let timeText) = timeValue else {
            return .refuse(
                field: "properties.time", reason: "must be a number of seconds (or milliseconds) since epoch")
        }
        guard let millis = Self.millis(fromTimeLiteral: timeText) else {
            return .refuse(field: "properties.time", reason: "is out of range: \(timeText)")
        }
        guard millis >= Self.earliestMillis else {
            return .refuse(field: "properties.time", reason: "is before 1971-01-01: \(timeText)")
        }
        guard millis <= nowMillis + Self.futureToleranceMillis else {
            return .refuse(field: "properties.time", reason: "is more than 1 hour in the future: \(timeText)")
        }

        // $insert_id (decisions.md: up to 255 bytes of printable characters).
        var insertId: String? = nil
        switch fields["$insert_id"] {
        case nil, .null?: break
        case .string(let text)?:
            if text.isEmpty { break }
            guard text.utf8.count <= Self.maxInsertIdBytes else {
                return .refuse(field: "properties.$insert_id", reason: "longer than 255 bytes")
            }
            guard Self.isPrintable(text) else {
                return .refuse(field: "properties.$insert_id", reason: "must be printable characters only")
            }
            insertId = text
        default:
            return .refuse(field: "properties.$insert_id", reason: "must be a string")
        }

        // Identifiers.
        var warning: String? = nil
        func identifier(_ key: String) -> String? {
            switch fields[key] {
            case nil, .null?: return nil
            case .string(let text)?:
                if Self.isPlaceholder(text) {
                    warning = "errInvalidIdentifier"
                    return nil
                }
                return text
            case .number(let text)?:
                // 0 and -1 in any spelling (0.0, -1e0) are placeholders too.
                if Self.isPlaceholder(text) || Double(text) == 0 || Double(text) == -1 {
                    warning = "errInvalidIdentifier"
                    return nil
                }
                return text
            default:
                warning = "errInvalidIdentifier"
                return nil
            }
        }
        var userId = identifier("$user_id")
        // A $device_id sent with the prefix (some SDKs copy the distinct_id) is the same device.
        var deviceId = identifier("$device_id").map { $0.hasPrefix("$device:") ? String($0.dropFirst(8)) : $0 }
        if let device = deviceId, Self.isPlaceholder(device) {
            warning = "errInvalidIdentifier"
            deviceId = nil
        }
        let sentDistinctId = identifier("distinct_id")
        if let value = userId, value.utf8.count > Self.maxKeyBytes {
            return .refuse(field: "properties.$user_id", reason: "longer than \(Self.maxKeyBytes) bytes")
        }
        if let value = deviceId, value.utf8.count > Self.maxKeyBytes {
            return .refuse(field: "properties.$device_id", reason: "longer than \(Self.maxKeyBytes) bytes")
        }
        if let value = sentDistinctId, value.utf8.count > Self.maxKeyBytes {
            return .refuse(field: "properties.distinct_id", reason: "longer than \(Self.maxKeyBytes) bytes")
        }
        let ingested: String?
        switch mode {
        case .simplified:
            // S-R2..S-R4.
            if userId == nil && deviceId == nil, let sent = sentDistinctId {
                if sent.hasPrefix("$device:") {
                    let device = String(sent.dropFirst("$device:".count))
                    if Self.isPlaceholder(device) {
                        warning = "errInvalidIdentifier"
                    } else {
                        deviceId = device
                    }
                } else {
                    userId = sent
                }
            }
            ingested = userId ?? deviceId.map { "$device:" + $0 }
        case .original, .legacy:
            // decisions.md, Original API: the event's own distinct_id; else derived as in
            // the simplified API, but $user_id/$device_id link nothing.
            var own = sentDistinctId ?? userId ?? deviceId.map { "$device:" + $0 }
            if own == nil {
                // Identity events are stored under the first id they name.
                for key in ["$identified_id", "alias"] {
                    if case .string(let text)? = fields[key], !Self.isPlaceholder(text) {
                        own = text
                        break
                    }
                }
                if own == nil, case .array(let ids)? = fields["$distinct_ids"], case .string(let first)? = ids.first,
                    !Self.isPlaceholder(first)
                {
                    own = first
                }
            }
            ingested = own
        }
        guard let ingestedId = ingested else {
            if warning != nil {
                return .refuse(
                    field: "properties.distinct_id",
                    reason: "no usable identifier: $user_id, $device_id and distinct_id are missing or placeholders")
            }
            return .refuse(
                field: "properties.distinct_id", reason: "missing: needs $user_id, $device_id or distinct_id")
        }
        return .accept(
            Accepted(
                event: event, timeMillis: millis, insertId: insertId, ingestedDistinctId: ingestedId,
                deviceId: deviceId, userId: userId, warning: warning))
    }

    /// `millis(fromTimeLiteral:)` for the common spelling, digits only (JSON allows no leading
    /// zero but in "0"); nil for anything else, which takes the general path.
    @inline(__always) static func millis(fromIntegerLiteral text: String) -> Int64? {
        let utf8 = text.utf8
        let count = utf8.count
        guard count > 0, count <= 16, count == 1 || utf8.first != 0x30 else { return nil }
        var value: Int64 = 0
        for b in utf8 {
            guard b >= 0x30 && b <= 0x39 else { return nil }
            value = value * 10 + Int64(b - 0x30)
        }
        // 13 or more integer digits: milliseconds; 12: milliseconds unless exactly 1e11.
        let isMillis = count > 12 || (count == 12 && value != 100_000_000_000)
        return isMillis ? value : value * 1000
    }

    /// True when every character is printable: no controls, format characters, line or
    /// paragraph separators, private-use or unassigned code points.
    static func isPrintable(_ text: String) -> Bool {
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return true }
        return !text.unicodeScalars.contains { scalar in
            switch scalar.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator, .privateUse, .surrogate, .unassigned:
                return true
            default:
                return false
            }
        }
    }

    /// Converts a JSON number literal of seconds (or milliseconds above 1e11) to whole
    /// milliseconds, truncating finer fractions. Exact: no binary floating point.
    ///
    /// - Returns: nil for negative values or values too large to be a time.
    public static func millis(fromTimeLiteral text: String) -> Int64? {
        if let whole = millis(fromIntegerLiteral: text) { return whole }
        var digits: [UInt8] = []
        var fractionDigits = 0
        var exponent = 0
        var seenPoint = false
        var bytes = Array(text.utf8)[...]
        if bytes.first == UInt8(ascii: "-") { return nil }
        while let b = bytes.first {
            if b >= 0x30 && b <= 0x39 {
                digits.append(b - 0x30)
                if seenPoint { fractionDigits += 1 }
            } else if b == UInt8(ascii: ".") {
                seenPoint = true
            } else if b == UInt8(ascii: "e") || b == UInt8(ascii: "E") {
                guard let e = Int(String(decoding: bytes.dropFirst(), as: UTF8.self)) else { return nil }
                exponent = e
                break
            } else {
                return nil
            }
            bytes = bytes.dropFirst()
        }
        // value = digits * 10^(exponent - fractionDigits)
        while let first = digits.first, first == 0, digits.count > 1 { digits.removeFirst() }
        let scale = exponent - fractionDigits
        let magnitude = digits.count + scale  // number of integer digits
        guard magnitude <= 16 else { return nil }
        let isMillis: Bool
        if magnitude > 12 {
            isMillis = true
        } else if magnitude < 12 {
            isMillis = false
        } else {
            // 12 integer digits: milliseconds unless the value is exactly 1e11 (decisions.md:
            // milliseconds when the value exceeds 1e11).
            let exactly = digits.first == 1 && digits.dropFirst().allSatisfy { $0 == 0 }
            isMillis = !exactly
        }
        let shift = scale + (isMillis ? 0 : 3)
        var value: Int64 = 0
        if shift >= 0 {
            for d in digits { value = value * 10 + Int64(d) }
            for _ in 0..<shift { value *= 10 }
        } else {
            let keep = digits.count + shift
            guard keep > 0 else { return 0 }
            for d in digits.prefix(keep) { value = value * 10 + Int64(d) }
        }
        return value
    }
}
