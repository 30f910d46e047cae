import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// Simplified-mode imports against a brute-force model of the rules (decisions.md, Ingestion
/// and Simplified API): random batches over a small domain, so that copies repeat inside a
/// batch, across batches (the upsert path) and in between, with links, failures, derived
/// `$insert_id`s, ignored and refused records. Several batches run on one connection, as the
/// HTTP service does.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct ImportReferenceTests {
    /// A record as generated: nil fields are left out of the JSON.
    struct Record {
        var event: String
        var time: Int?
        var insertId: String?
        var deviceId: String?
        var userId: String?
        var v: Int
        var ignore = false

        var json: String {
            var properties: [String] = []
            if let time { properties.append(#""time":\#(time)"#) }
            if let insertId { properties.append(#""$insert_id":"\#(insertId)""#) }
            if let deviceId { properties.append(#""$device_id":"\#(deviceId)""#) }
            if let userId { properties.append(#""$user_id":"\#(userId)""#) }
            properties.append(#""v":\#(v)"#)
            if ignore { properties.append(#""$ignore":true"#) }
            return #"{"event":"\#(event)","properties":{\#(properties.joined(separator: ","))}}"#
        }

        /// The identifiers as ingest derives them ("undefined" is a placeholder: a warning).
        var device: String? { deviceId == "undefined" ? nil : deviceId }
        var warning: String? { deviceId == "undefined" ? "errInvalidIdentifier" : nil }
        var ingested: String { userId ?? "$device:" + device! }
        /// The duplicate key; a missing `$insert_id` stands for the hash of the other properties.
        var key: String {
            let insert = insertId ?? "derived:\(deviceId ?? "-")|\(userId ?? "-")|\(v)"
            return "\(ingested)|\(time!)|\(insert)|\(event)"
        }
    }

    struct StoredEvent: Equatable {
        var seq: Int
        var batchId: Int
        var deviceId: String?
        var userId: String?
        var distinctId: String
        var resolvedSeq: Int
        var failure: String?
        var v: Int
    }

    struct Link: Equatable {
        var canonical: String
        var seq: Int
        var rewritten: Bool
    }

    /// The model: what the database must hold after each batch, and each batch's summary.
    struct Model {
        var events: [String: StoredEvent] = [:]
        var links: [String: Link] = [:]
        var lastSeq = 0

        mutating func apply(_ records: [Record], batchId: Int) -> (stored: Int, duplicates: Int, links: Int) {
            // Positions of staged records (accepted and refused; ignored ones are not staged).
            var staged: [(pos: Int, record: Record)] = []
            var maxStagedPos = -1
            for (pos, record) in records.enumerated() where !record.ignore {
                maxStagedPos = pos
                if record.time != nil { staged.append((pos, record)) }
            }
            let seqBase = lastSeq
            lastSeq += maxStagedPos + 1
            // The latest copy of each key wins inside the batch.
            var winners: [String: (seq: Int, record: Record)] = [:]
            for (pos, record) in staged { winners[record.key] = (seqBase + pos + 1, record) }
            // Links: the first winning event per device with a user, unless linked already.
            var linksMade = 0
            let pairs = winners.values.filter { $0.record.device != nil && $0.record.userId != nil }
                .sorted { $0.seq < $1.seq }
            for pair in pairs {
                let deviceKey = "$device:" + pair.record.device!
                guard links[deviceKey] == nil else { continue }
                // Events stored before this batch under the device need the nightly rewrite.
                let older = events.contains { $0.value.resolvedSeq < pair.seq && ingested(of: $0.key) == deviceKey }
                links[deviceKey] = Link(canonical: pair.record.userId!, seq: pair.seq, rewritten: !older)
                linksMade += 1
            }
            var replaced = 0
            for (key, winner) in winners {
                let record = winner.record
                if events[key] != nil { replaced += 1 }
                let map = links[record.ingested]
                var failure = record.warning
                if let user = record.userId, let device = record.device, let link = links["$device:" + device],
                    link.canonical != user
                {
                    failure = "errAnonDistinctIdAssignedAlready"
                }
                events[key] = StoredEvent(
                    seq: winner.seq, batchId: batchId, deviceId: record.device, userId: record.userId,
                    distinctId: map?.canonical ?? record.ingested, resolvedSeq: map?.seq ?? 0, failure: failure,
                    v: record.v)
            }
            return (winners.count, staged.count - winners.count + replaced, linksMade)
        }

        private func ingested(of key: String) -> String { String(key.prefix { $0 != "|" }) }
    }

    struct SplitMix64: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// Random records; without `linking`, no record carries both a device and a user.
    static func batch(_ count: Int, linking: Bool = true, using rng: inout SplitMix64) -> [Record] {
        (0..<count).map { _ in
            let deviceId: String? =
                Int.random(in: 0..<10, using: &rng) == 0
                ? "undefined"
                : (Int.random(in: 0..<5, using: &rng) == 0 ? nil : "D\(Int.random(in: 0..<12, using: &rng))")
            var userId: String? =
                linking && Int.random(in: 0..<3, using: &rng) == 0 ? "U\(Int.random(in: 0..<6, using: &rng))" : nil
            if deviceId == nil || deviceId == "undefined" {
                userId = userId ?? "U\(Int.random(in: 0..<6, using: &rng))"
            }
            return Record(
                event: ["A", "B"][Int.random(in: 0..<2, using: &rng)],
                time: Int.random(in: 0..<25, using: &rng) == 0
                    ? nil : 1_767_225_600 + Int.random(in: 0..<3, using: &rng),
                insertId: Int.random(in: 0..<4, using: &rng) == 0 ? nil : "i\(Int.random(in: 0..<6, using: &rng))",
                deviceId: deviceId, userId: userId, v: Int.random(in: 0..<2, using: &rng),
                ignore: Int.random(in: 0..<30, using: &rng) == 0)
        }
    }

    @Test(arguments: [1, 2, 3])
    func batchesMatchTheModel(seed: UInt64) throws {
        var rng = SplitMix64(state: seed)
        // The first batch links nothing, so later links find older events (rewritten = false).
        var batches = [Self.batch(200, linking: false, using: &rng)]
        batches += (0..<4).map { _ in Self.batch(Int.random(in: 1...300, using: &rng), using: &rng) }
        batches.append(batches[1])  // the same file again: every copy is stored already
        batches.append([])
        batches.append(Self.batch(3, using: &rng))  // a few copies among stored events
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            var model = Model()
            for (index, records) in batches.enumerated() {
                let body = records.map(\.json).joined(separator: "\n")
                let summary = try importer.importBytes(Array(body.utf8), name: "batch-\(index)")
                let expected = model.apply(records, batchId: Int(summary.batchId))
                #expect(summary.records == records.count, "batch \(index)")
                #expect(summary.stored == expected.stored, "batch \(index)")
                #expect(summary.duplicates == expected.duplicates, "batch \(index)")
                #expect(summary.links == expected.links, "batch \(index)")
                #expect(summary.refused == records.filter { !$0.ignore && $0.time == nil }.count, "batch \(index)")

                var stored: [String: StoredEvent] = [:]
                for row in try db.query(
                    """
                    select ingested_distinct_id || '|' || extract(epoch from time)::bigint || '|' ||
                        case when insert_id like 'idm-%' then 'derived:' || coalesce(properties->>'$device_id', '-')
                            || '|' || coalesce(user_id, '-') || '|' || (properties->>'v') else insert_id end
                        || '|' || event as key,
                        seq, batch_id, device_id, user_id, distinct_id, resolved_seq, identity_failure_reason,
                        (properties->>'v')::int as v
                    from idmerge.events
                    """
                ).rows {
                    stored[row["key"]!] = StoredEvent(
                        seq: try row.decode("seq"), batchId: try row.decode("batch_id"), deviceId: row["device_id"],
                        userId: row["user_id"], distinctId: row["distinct_id"]!,
                        resolvedSeq: try row.decode("resolved_seq"), failure: row["identity_failure_reason"],
                        v: try row.decode("v"))
                }
                #expect(stored == model.events, "batch \(index)")

                var links: [String: Link] = [:]
                for row in try db.query("select id, canonical_id, seq, rewritten from idmerge.identity_map").rows {
                    links[row["id"]!] = Link(
                        canonical: row["canonical_id"]!, seq: try row.decode("seq"), rewritten: row["rewritten"] == "t")
                }
                #expect(links == model.links, "batch \(index)")
                if index == batches.count - 1 {
                    // The model's corners were reached.
                    #expect(model.links.values.contains { !$0.rewritten })
                    #expect(model.events.values.contains { $0.failure == "errAnonDistinctIdAssignedAlready" })
                    #expect(model.events.values.contains { $0.resolvedSeq > 0 })
                }
            }
        }
    }
}
