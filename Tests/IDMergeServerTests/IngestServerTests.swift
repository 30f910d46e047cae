import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

@testable import IDMergeServer

/// One event as Mixpanel's /import takes it.
func event(
    _ name: String, insertId: String, device: String? = nil, user: String? = nil, time: Int = 1_767_225_600,
    extra: String = ""
) -> String {
    var properties = "\"time\":\(time),\"$insert_id\":\"\(insertId)\""
    if let device { properties += ",\"$device_id\":\"\(device)\"" }
    if let user { properties += ",\"$user_id\":\"\(user)\"" }
    return "{\"event\":\"\(name)\",\"properties\":{\(properties)\(extra)}}"
}

func array(_ events: [String]) -> [UInt8] { Array(("[" + events.joined(separator: ",") + "]").utf8) }

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct IngestServerTests {
    static let json = ["Content-Type": "application/json"]

    @Test func importAnswersLikeMixpanelAndStoresAfterCommit() async throws {
        try await TestDatabase.withFreshAsync { conninfo in
            let db = try TestDatabase.connect(conninfo)
            let created = try Projects.create(name: "web", mode: .simplified, on: db)
            db.close()
            try await TestServer.with(conninfo) { base in
                var headers = Self.json
                headers["Authorization"] = HTTP.basic(created.secret)
                let body = array((0..<3).map { event("Viewed", insertId: "v\($0)", device: "D1") })
                let ok = try await HTTP.send("POST", base + "/import", headers: headers, body: body)
                #expect(ok.status == 200)
                #expect(ok.body == #"{"code":200,"num_records_imported":3,"status":"OK"}"#)
                #expect(try TestDatabase.count("select count(*) as n from idmerge.events", conninfo) == 3)

                // Wrong, missing, or another project's name: 401 with Mixpanel's body.
                let unauthorized = #"{"code":401,"error":"Invalid credentials","status":"Unauthorized"}"#
                var wrong = Self.json
                wrong["Authorization"] = HTTP.basic("not-the-secret")
                let denied = try await HTTP.send("POST", base + "/import", headers: wrong, body: body)
                #expect(denied.status == 401 && denied.body == unauthorized)
                let missing = try await HTTP.send("POST", base + "/import", headers: Self.json, body: body)
                #expect(missing.status == 401 && missing.body == unauthorized)
                let byName = try await HTTP.send("POST", base + "/import?project_id=web", headers: headers, body: body)
                #expect(byName.status == 200)
                let otherName = try await HTTP.send(
                    "POST", base + "/import?project_id=other", headers: headers, body: body)
                #expect(otherName.status == 401)

                // NDJSON, gzip.
                let ndjson = Array(
                    (0..<4).map { event("Clicked", insertId: "c\($0)", user: "U1") }.joined(separator: "\n").utf8)
                var gz = headers
                gz["Content-Encoding"] = "gzip"
                gz["Content-Type"] = "application/x-ndjson"
                let gzipped = try await HTTP.send("POST", base + "/import", headers: gz, body: try gzip(ndjson))
                #expect(gzipped.body == #"{"code":200,"num_records_imported":4,"status":"OK"}"#)
                #expect(try TestDatabase.count("select count(*) as n from idmerge.events", conninfo) == 7)
            }
        }
    }

    @Test func strictImportListsFailedRecordsAndStoresTheRest() async throws {
        try await TestDatabase.withFreshAsync { conninfo in
            let db = try TestDatabase.connect(conninfo)
            let created = try Projects.create(name: "web", mode: .simplified, on: db)
            db.close()
            try await TestServer.with(conninfo) { base in
                var headers = Self.json
                headers["Authorization"] = HTTP.basic(created.secret)
                let body = array([
                    event("Good", insertId: "g1", device: "D1"),
                    #"{"event":"Bad","properties":{"time":"yesterday","$device_id":"D1","$insert_id":"b1"}}"#,
                    event("Good", insertId: "g2", device: "D1"),
                    #"{"event":"NoProps"}"#,
                ])
                let strict = try await HTTP.send("POST", base + "/import?strict=1", headers: headers, body: body)
                #expect(strict.status == 400)
                let json = try #require(strict.json)
                #expect(json["code"] as? Int == 400)
                #expect(json["status"] as? String == "Bad Request")
                #expect(json["num_records_imported"] as? Int == 2)
                let failed = try #require(json["failed_records"] as? [[String: Any]])
                #expect(failed.map { $0["index"] as? Int } == [1, 3])
                #expect(failed[0]["$insert_id"] as? String == "b1")
                #expect(failed[0]["field"] as? String == "properties.time")
                #expect((failed[0]["message"] as? String)?.hasPrefix("'properties.time' is invalid:") == true)
                #expect(try TestDatabase.count("select count(*) as n from idmerge.events", conninfo) == 2)

                // Not strict: 200, the good ones counted; the bad ones are kept as refused records.
                let lenient = try await HTTP.send("POST", base + "/import", headers: headers, body: body)
                #expect(lenient.body == #"{"code":200,"num_records_imported":2,"status":"OK"}"#)
                #expect(try TestDatabase.count("select count(*) as n from idmerge.refused_records", conninfo) == 4)

                // A broken array is imported on its own; what can be read is refused with a reason.
                let broken = Array(("[" + event("Good", insertId: "g3", device: "D1") + ",{\"event\":").utf8)
                let partial = try await HTTP.send("POST", base + "/import?strict=1", headers: headers, body: broken)
                #expect(partial.status == 400)
                #expect((partial.json?["failed_records"] as? [[String: Any]])?.first?["index"] as? Int == 1)

                // Not JSON at all: each line refused, never a 500.
                let garbage = try await HTTP.send(
                    "POST", base + "/import?strict=1", headers: headers, body: Array("hello\nworld".utf8))
                #expect(garbage.status == 400)
                #expect((garbage.json?["failed_records"] as? [[String: Any]])?.count == 2)
                let empty = try await HTTP.send("POST", base + "/import", headers: headers, body: [])
                #expect(empty.status == 400)
                #expect(empty.json?["error"] as? String == "the request holds no events")
            }
        }
    }

    @Test func limitsAnswer413BeforeAndDuringDecompression() async throws {
        try await TestDatabase.withFreshAsync { conninfo in
            let db = try TestDatabase.connect(conninfo)
            let created = try Projects.create(name: "web", mode: .simplified, on: db)
            db.close()
            try await TestServer.with(conninfo) { base in
                var headers = Self.json
                headers["Authorization"] = HTTP.basic(created.secret)
                let tooMany = array((0..<2001).map { event("E", insertId: "e\($0)", device: "D") })
                let many = try await HTTP.send("POST", base + "/import", headers: headers, body: tooMany)
                #expect(many.status == 413)
                #expect(many.json?["status"] as? String == "Request Entity Too Large")
                // A gzip bomb: 50 MB of spaces in a few KB.
                let bomb = try gzip([UInt8](repeating: 0x20, count: 50_000_000))
                #expect(bomb.count < 200_000)
                var gz = headers
                gz["Content-Encoding"] = "gzip"
                let exploded = try await HTTP.send("POST", base + "/import", headers: gz, body: bomb)
                #expect(exploded.status == 413)
                let bad = try await HTTP.send("POST", base + "/import", headers: gz, body: [0x1F, 0x8B, 1, 2, 3])
                #expect(bad.status == 400)
                #expect(try TestDatabase.count("select count(*) as n from idmerge.events", conninfo) == 0)
            }
        }
    }

    @Test func trackTakesFormDataPicksTheProjectByTokenAndRefusesMerge() async throws {
        try await TestDatabase.withFreshAsync { conninfo in
            let db = try TestDatabase.connect(conninfo)
            let created = try Projects.create(name: "app", mode: .original, on: db)
            db.close()
            let token = created.project.token
            try await TestServer.with(conninfo) { base in
                let form = ["Content-Type": "application/x-www-form-urlencoded"]
                let one =
                    "{\"event\":\"Opened\",\"properties\":{\"token\":\"\(token)\",\"distinct_id\":\"a1\",\"$insert_id\":\"t1\"}}"
                let plain = try await HTTP.send(
                    "POST", base + "/track", headers: form, body: HTTP.form([("data", one)]))
                #expect(plain.status == 200 && plain.body == "1")
                let base64 = Data(one.replacingOccurrences(of: "t1", with: "t2").utf8).base64EncodedString()
                let verbose = try await HTTP.send(
                    "POST", base + "/track", headers: form, body: HTTP.form([("data", base64), ("verbose", "1")]))
                #expect(verbose.body == #"{"status":1,"error":null}"#)
                let query = HTTP.form([("data", "[" + one.replacingOccurrences(of: "t1", with: "t3") + "]")])
                let get = try await HTTP.send("GET", base + "/track?" + String(decoding: query, as: UTF8.self))
                #expect(get.body == "1")
                let unknown = one.replacingOccurrences(of: token, with: "nope")
                let denied = try await HTTP.send(
                    "POST", base + "/track?verbose=1", headers: form, body: HTTP.form([("data", unknown)]))
                #expect(denied.status == 401)
                #expect(denied.json?["status"] as? Int == 0)
                let garbage = try await HTTP.send(
                    "POST", base + "/track", headers: form, body: HTTP.form([("data", "%%%")]))
                #expect(garbage.status == 400 && garbage.body == "0")
                // Events from /track without a time get the arrival time (as Mixpanel does).
                #expect(try TestDatabase.count("select count(*) as n from idmerge.events", conninfo) == 3)

                // $merge through /track: stored, but merges nothing.
                let merge =
                    "{\"event\":\"$merge\",\"properties\":{\"token\":\"\(token)\",\"$distinct_ids\":[\"a1\",\"b1\"],\"$insert_id\":\"m1\"}}"
                let tracked = try await HTTP.send(
                    "POST", base + "/track", headers: form, body: HTTP.form([("data", merge)]))
                #expect(tracked.body == "1")
                #expect(
                    try TestDatabase.count(
                        "select count(*) as n from idmerge.events where identity_failure_reason = 'errMergeNotAuthenticated'",
                        conninfo) == 1)
                // The same through /import with the secret merges.
                var headers = Self.json
                headers["Authorization"] = HTTP.basic(created.secret)
                let imported = try await HTTP.send(
                    "POST", base + "/import", headers: headers,
                    body: Array(merge.replacingOccurrences(of: "m1", with: "m2").utf8))
                #expect(imported.status == 200)
                #expect(
                    try TestDatabase.count(
                        "select count(*) as n from idmerge.events where event = '$merge' and identity_failure_reason is null",
                        conninfo) == 1)
            }
        }
    }

    @Test func concurrentRequestsShareTransactionsAndAllCommit() async throws {
        try await TestDatabase.withFreshAsync { conninfo in
            let db = try TestDatabase.connect(conninfo)
            let created = try Projects.create(name: "web", mode: .simplified, on: db)
            db.close()
            try await TestServer.with(conninfo) { base in
                let headers = Self.json.merging(["Authorization": HTTP.basic(created.secret)]) { $1 }
                let answers = try await withThrowingTaskGroup(of: HTTPResult.self) { group in
                    for request in 0..<40 {
                        let body = array(
                            (0..<50).map { event("E", insertId: "r\(request)-\($0)", device: "D\(request)") })
                        group.addTask { try await HTTP.send("POST", base + "/import", headers: headers, body: body) }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(answers.allSatisfy { $0.body == #"{"code":200,"num_records_imported":50,"status":"OK"}"# })
                #expect(try TestDatabase.count("select count(*) as n from idmerge.events", conninfo) == 2000)
                let batches = try TestDatabase.count("select count(*) as n from idmerge.import_batches", conninfo)
                #expect(batches <= 40)
                let metrics = try await HTTP.send("GET", base + "/metrics")
                #expect(metrics.body.contains("idmerge_events_stored_total 2000"))
                #expect(metrics.body.contains("idmerge_http_request_duration_seconds_bucket"))
                #expect(metrics.body.contains(#"idmerge_http_requests_total{endpoint="import",status="200"} 40"#))
            }
        }
    }

    @Test func fullQueueAnswers429WithRetryAfter() async throws {
        try await TestDatabase.withFreshAsync { conninfo in
            let db = try TestDatabase.connect(conninfo)
            let created = try Projects.create(name: "web", mode: .simplified, on: db)
            defer { db.close() }
            try await TestServer.with(conninfo, configure: { $0.queue.maxQueuedEvents = 10 }) { base in
                let headers = Self.json.merging(["Authorization": HTTP.basic(created.secret)]) { $1 }
                // Hold the project's lock so the first batch waits in PostgreSQL, whatever
                // happens below: the lock is released on every path, or the server could not
                // finish its in-flight batch and shut down.
                try db.query("select pg_advisory_lock(hashtext('idmerge.project'), $1)", [created.project.id])
                var unlocked = false
                func unlock() throws {
                    if !unlocked {
                        unlocked = true
                        try db.query("select pg_advisory_unlock(hashtext('idmerge.project'), $1)", [created.project.id])
                    }
                }
                do {
                    let first = Task {
                        try await HTTP.send(
                            "POST", base + "/import", headers: headers,
                            body: array([event("A", insertId: "a1", device: "D")]))
                    }
                    // The first batch is in a worker, waiting for the lock...
                    try await Self.waitUntil {
                        let sql = """
                            select count(*) as n from pg_locks
                            where locktype = 'advisory' and not granted
                                and database = (select oid from pg_database where datname = current_database())
                            """
                        return try TestDatabase.count(sql, conninfo) == 1
                    }
                    let second = Task {
                        try await HTTP.send(
                            "POST", base + "/import", headers: headers,
                            body: array((0..<8).map { event("B", insertId: "b\($0)", device: "D") }))
                    }
                    // ...and the second waits in the queue (8 of at most 10 events).
                    try await Self.waitUntil {
                        try await HTTP.send("GET", base + "/healthz").json?["queued_events"] as? Int == 8
                    }
                    let third = try await HTTP.send(
                        "POST", base + "/import", headers: headers,
                        body: array((0..<8).map { event("C", insertId: "c\($0)", device: "D") }))
                    #expect(third.status == 429)
                    #expect(third.headers["retry-after"] == "1")
                    #expect(
                        third.body
                            == #"{"code":429,"error":"Project exceeded rate limits. Please retry the request with exponential backoff.","status":"Too Many Requests"}"#
                    )
                    try unlock()
                    #expect(try await first.value.status == 200)
                    #expect(try await second.value.status == 200)
                } catch {
                    try? unlock()
                    throw error
                }
            }
        }
    }

    /// Polls `condition` every 20 ms for up to 30 s.
    static func waitUntil(_ condition: () async throws -> Bool) async throws {
        for _ in 0..<1500 {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestHTTPError(message: "timed out waiting for a condition")
    }

    @Test func engageHealthAndMetrics() async throws {
        try await TestDatabase.withFreshAsync { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let token = try Projects.create(name: "web", mode: .simplified, on: db).project.token
            try await TestServer.with(conninfo) { base in
                // One update as form data (base64, as older SDKs send it), answered 1.
                let update = #"{"$token":"\#(token)","$distinct_id":"u1","$set":{"plan":"pro"}}"#
                let encoded = Data(update.utf8).base64EncodedString()
                let engage = try await HTTP.send("POST", base + "/engage", body: HTTP.form([("data", encoded)]))
                #expect(engage.status == 200)
                #expect(engage.body == "1")
                // A batch with one bad update: verbose names it, the good one is applied.
                let batch =
                    #"[{"$token":"\#(token)","$distinct_id":"u2","$add":{"n":"x"}},"#
                    + #"{"$token":"\#(token)","$distinct_id":"u2","$set":{"a":1}}]"#
                let verbose = try await HTTP.send(
                    "POST", base + "/engage?verbose=1", body: HTTP.form([("data", batch)]))
                #expect(verbose.status == 200)
                #expect(verbose.json?["status"] as? Int == 0)
                #expect((verbose.json?["error"] as? String)?.contains("update 0") == true, "\(verbose.body)")
                let strict = try await HTTP.send(
                    "POST", base + "/engage?strict=1", headers: ["Content-Type": "application/json"],
                    body: Array(batch.utf8))
                #expect(strict.status == 400)
                #expect((strict.json?["failed_records"] as? [[String: Any]])?.first?["index"] as? Int == 0)
                // No token, an unknown token, and broken JSON: refused with a reason, never 500.
                let noToken = try await HTTP.send(
                    "POST", base + "/engage?verbose=1", body: HTTP.form([("data", #"{"$distinct_id":"u3","$set":{}}"#)])
                )
                #expect(noToken.status == 400)
                #expect((noToken.json?["error"] as? String)?.contains("$token") == true)
                let unknown = try await HTTP.send(
                    "POST", base + "/engage",
                    body: HTTP.form([("data", #"{"$token":"nope","$distinct_id":"u3","$set":{}}"#)]))
                #expect(unknown.status == 401)
                #expect(unknown.body == "0")
                let broken = try await HTTP.send("POST", base + "/engage", body: HTTP.form([("data", "[{")]))
                #expect(broken.status == 400)
                // One update of a batch is not JSON (NaN): it alone is refused, with its reason,
                // and the batch's project is read from the others.
                let withNaN =
                    #"[{"$token":"\#(token)","$distinct_id":"u4","$add":{"n":NaN}},"#
                    + #"{"$token":"\#(token)","$distinct_id":"u4","$set":{"b":2}}]"#
                let partly = try await HTTP.send(
                    "POST", base + "/engage?verbose=1", headers: ["Content-Type": "application/json"],
                    body: Array(withNaN.utf8))
                #expect(partly.status == 200)
                #expect((partly.json?["error"] as? String)?.contains("update 0") == true, "\(partly.body)")
                #expect((partly.json?["error"] as? String)?.contains("token") == false, "\(partly.body)")
                let truncated = try await HTTP.send(
                    "POST", base + "/engage?verbose=1", headers: ["Content-Type": "application/json"],
                    body: Array(#"{"$token":"\#(token)","$distinct_id":"x","$set":{"a":1}"#.utf8))
                #expect(truncated.status == 400)
                #expect((truncated.json?["error"] as? String)?.contains("malformed JSON") == true, "\(truncated.body)")
                // Broken chunked framing is the request's fault: 400, not a 503 that invites
                // retries. (The headers go first, so the handler is reading the body when the
                // framing breaks; had the parser seen it first, it would close the connection.)
                let framing = try HTTP.raw(
                    base,
                    [
                        Array(
                            "POST /engage HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                                .utf8),
                        Array("ZZZ\r\nabc\r\n0\r\n\r\n".utf8),
                    ])
                #expect(!framing.contains(" 503 "), "\(framing)")
                #expect(framing.isEmpty || framing.hasPrefix("HTTP/1.1 400"), "\(framing)")
                let properties = try db.query(
                    "select distinct_id, properties::text as p from idmerge.profiles order by distinct_id"
                ).rows.map { try [$0.decode("distinct_id", as: String.self), $0.decode("p", as: String.self)] }
                #expect(properties == [["u1", #"{"plan": "pro"}"#], ["u2", #"{"a": 1}"#], ["u4", #"{"b": 2}"#]])
                let groups = try await HTTP.send("POST", base + "/groups", body: HTTP.form([("data", "[]")]))
                #expect(groups.status == 501)
                let health = try await HTTP.send("GET", base + "/healthz")
                #expect(health.status == 200)
                let metrics = try await HTTP.send("GET", base + "/metrics")
                #expect(metrics.body.contains("idmerge_http_requests_total{endpoint=\"engage\",status=\"200\"} 3"))
                #expect(metrics.body.contains("idmerge_profile_updates_applied_total 4"), "\(metrics.body)")
            }
        }
    }
}

@Suite struct PayloadTests {
    @Test func sha256MatchesKnownVectors() {
        #expect(SecretHash.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SecretHash.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(
            SecretHash.hex(String(repeating: "a", count: 1000))
                == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    @Test func splitKeepsRecordsWhole() throws {
        let body = Array(#"[ {"a":"x,]}"}, [1,2] ,{"b":{"c":[3]}} ]"#.utf8)
        let payload = try Payload.split(body)
        #expect(payload.count == 3 && payload.embeddable)
        let lines = try Payload.split(Array("{\"a\":1}\n\n1, 2\n".utf8))
        #expect(lines.count == 2 && !lines.embeddable && lines.lines == [1, 3])
        #expect(MixpanelHandlers.basicSecret("Basic " + Data("s3cret:".utf8).base64EncodedString()) == "s3cret")
        #expect(MixpanelHandlers.basicSecret("Basic " + Data("sa:pw".utf8).base64EncodedString()) == "pw")
        #expect(MixpanelHandlers.basicSecret("Bearer x") == nil)
    }
}
