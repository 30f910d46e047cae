import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// Anonymous events on `devices` devices (batch 1), then a sign-up linking each (batch 2),
/// so that the nightly job has `devices` links and `devices * perDevice` rows to rewrite.
func anonymousThenLinked(devices: Int, perDevice: Int, prefix: String = "d") throws -> ([UInt8], [UInt8]) {
    var anonymous: [Any] = []
    var links: [Any] = []
    for d in 0..<devices {
        for k in 0..<perDevice {
            anonymous.append([
                "event": "Page View",
                "properties": [
                    "time": 1_767_225_600 + d * 10 + k, "$device_id": "\(prefix)\(d)",
                    "$insert_id": "\(prefix)\(d)-\(k)",
                ],
            ])
        }
        links.append([
            "event": "Sign Up",
            "properties": [
                "time": 1_767_225_600 + d * 10 + 9, "$device_id": "\(prefix)\(d)", "$user_id": "u-\(prefix)\(d)",
                "$insert_id": "\(prefix)\(d)-signup",
            ],
        ])
    }
    return (try ndjson(anonymous), try ndjson(links))
}

/// Rows where the live view disagrees with the identity map's definition of resolution.
func liveViewErrors(_ db: Connection, projectId: Int) throws -> Int {
    try db.query(
        """
        select count(*) as n
        from idmerge.resolved_events as r
        left join idmerge.identity_map as m on m.project_id = r.project_id and m.id = r.ingested_distinct_id
        where r.project_id = $1 and r.distinct_id <> coalesce(m.canonical_id, r.ingested_distinct_id)
        """, [projectId]
    ).first!.decode("n")
}

func invariantViolations(_ db: Connection, projectId: Int) throws -> Int {
    try db.query(try SQLResources.query("queries/invariant_rewritten_equals_live.sql"), [projectId]).rows.count
}

/// The `idmerge` executable built beside the tests (`IDMERGE_BIN` overrides).
var idmergeBinary: String {
    if let path = ProcessInfo.processInfo.environment["IDMERGE_BIN"] { return path }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    return root.appendingPathComponent(".build/debug/idmerge").path
}

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct NightlyTests {
    @Test func nightlyRewritesPendingLinksAndASecondRunChangesNothing() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let (anonymous, links) = try anonymousThenLinked(devices: 50, perDevice: 3)
            _ = try importer.importBytes(anonymous, name: "anonymous")
            _ = try importer.importBytes(links, name: "links")
            #expect(try invariantViolations(db, projectId: project.id) == 150)
            var freshness = try Freshness.read(project: project, on: db)
            #expect(freshness.pendingLinks == 50)
            #expect(freshness.pendingEvents == 150)
            #expect(freshness.identityAsOf == nil)

            var job = NightlyJob(connection: db, project: project, logger: TestDatabase.logger)
            job.chunkSize = 7
            let first = try job.run()
            #expect(first.linksApplied == 50)
            #expect(first.rowsRewritten == 150)
            #expect(try invariantViolations(db, projectId: project.id) == 0)
            freshness = try Freshness.read(project: project, on: db)
            #expect(freshness.pendingLinks == 0)
            #expect(freshness.identityAsOf != nil)
            #expect(freshness.lastRunOutcome == "succeeded")
            // The first run built the report tables in full, and analyzed the identity map with
            // them: the refreshes find the links since as_of_seq by its BRIN index on seq,
            // which the planner picks only with statistics.
            let analyzed = try db.query(
                "select last_analyze is not null as analyzed from pg_stat_user_tables where relid = 'idmerge.identity_map'::regclass"
            ).first!
            #expect(try analyzed.decode("analyzed") as Bool)

            let second = try job.run()
            #expect(second.linksApplied == 0)
            #expect(second.rowsRewritten == 0)
        }
    }

    @Test func aSecondRunWithNoWaitReportsTheLock() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            let other = try TestDatabase.connect(conninfo)
            defer {
                db.close()
                other.close()
            }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            _ = try importer.importBytes(try anonymousThenLinked(devices: 3, perDevice: 2).0, name: "anonymous")
            try other.query("select pg_advisory_lock($1)", [NightlyJob.lockKey(projectId: project.id)])
            // The refresh's connection opens before the lock is tried; it must not refresh
            // without the lock.
            var job = NightlyJob(connection: db, project: project, logger: TestDatabase.logger)
            job.reportConnection = { try TestDatabase.connect(conninfo) }
            #expect(throws: NightlyJob.LockBusy.self) { try job.run(wait: false) }
            let state = try db.query("select count(*) as n from idmerge.report_state").first!
            #expect(try state.decode("n") as Int == 0)
            let runs = try db.query("select count(*) as n from idmerge.job_runs").first!
            #expect(try runs.decode("n") as Int == 0)
        }
    }

    /// kill -9 part-way: the next run finishes, and the invariant holds.
    @Test func killedPartWayThenRerunHoldsTheInvariant() throws {
        guard FileManager.default.isExecutableFile(atPath: idmergeBinary) else {
            Issue.record("build the idmerge executable first (swift build): \(idmergeBinary)")
            return
        }
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let (anonymous, links) = try anonymousThenLinked(devices: 3000, perDevice: 4)
            _ = try importer.importBytes(anonymous, name: "anonymous")
            _ = try importer.importBytes(links, name: "links")

            let process = Process()
            process.executableURL = URL(fileURLWithPath: idmergeBinary)
            process.arguments = ["nightly", "--database-url", conninfo, "--chunk-size", "5"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            // Wait until some chunks have committed, then kill it.
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                let applied: Int = try db.query(
                    "select count(*) as n from idmerge.identity_map where rewritten"
                ).first!.decode("n")
                if applied >= 50 { break }
                usleep(20_000)
            }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            // The killed client's backend may still be committing the chunk it sent last:
            // wait for it to end, so the count below is the state the rerun starts from.
            try db.query(
                """
                select pg_terminate_backend(pid, 10000) from pg_stat_activity
                where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'
                """)
            let pendingAfterKill: Int = try db.query(
                "select count(*) as n from idmerge.identity_map where not rewritten"
            ).first!.decode("n")
            #expect(pendingAfterKill > 0, "the job was killed before it finished")
            // The view is exact even half-way.
            #expect(try liveViewErrors(db, projectId: project.id) == 0)
            // Recorded as running, shown as failed: no session holds its lock.
            let recorded = try db.query("select outcome from idmerge.job_runs order by id desc limit 1").first!
            #expect(recorded["outcome"] == "running")
            #expect(try Freshness.read(project: project, on: db).lastRunOutcome == "failed")

            let rerun = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
            #expect(rerun.linksApplied == pendingAfterKill)
            #expect(try invariantViolations(db, projectId: project.id) == 0)
            let outcomes = try db.query("select outcome from idmerge.job_runs order by id").rows.map { $0["outcome"] }
            #expect(outcomes == ["failed", "succeeded"])
        }
    }

    /// A run recorded as running is shown as running while a session holds the project's
    /// nightly lock, and as failed once none does (its process killed, its connection lost),
    /// as the next run records it.
    @Test func statusShowsARunWithoutItsLockAsFailed() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            try db.query("insert into idmerge.job_runs (project_id, job) values ($1, 'nightly')", [project.id])
            let holder = try TestDatabase.connect(conninfo)
            try holder.query("select pg_advisory_lock($1)", [NightlyJob.lockKey(projectId: project.id)])
            #expect(try Freshness.read(project: project, on: db).lastRunOutcome == "running")
            // Another project's lock does not count.
            try db.query("select pg_advisory_lock($1)", [NightlyJob.lockKey(projectId: project.id + 1)])
            holder.close()
            // The holder's backend ends a moment after its client has gone.
            var outcome: String?
            for _ in 0..<250 {
                outcome = try Freshness.read(project: project, on: db).lastRunOutcome
                if outcome == "failed" { break }
                usleep(20_000)
            }
            #expect(outcome == "failed")
        }
    }

    /// With the server allowing the run's role one connection, the run still succeeds: the
    /// main connection opens before the report tables' two (which then fail, and the refresh
    /// follows the rewrite on the main one, with a warning). Before, the three opened at once
    /// and a report connection could take the only slot (most runs failed).
    @Test func nightlyWithOneConnectionAllowedStillRuns() throws {
        guard FileManager.default.isExecutableFile(atPath: idmergeBinary) else {
            Issue.record("build the idmerge executable first (swift build): \(idmergeBinary)")
            return
        }
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let (anonymous, links) = try anonymousThenLinked(devices: 20, perDevice: 2, prefix: "one-")
            _ = try importer.importBytes(anonymous, name: "anonymous")
            let role = "idmerge_one_" + UUID().uuidString.prefix(8).lowercased()
            let password = ProcessInfo.processInfo.environment["PGPASSWORD"] ?? "idmerge-test"
            let create: String = try db.query(
                "select format('create role %I login connection limit 1 password %L in role %I', $1::text, $2::text, current_user) as sql",
                [role, password]
            ).first!.decode("sql")
            try db.execute(create)
            defer { _ = try? db.execute("drop role if exists \(Connection.quoteIdentifier(role))") }
            let limited = "\(conninfo) user=\(role) password=\(password)"
            for attempt in 0..<6 {
                if attempt == 3 { _ = try importer.importBytes(links, name: "links") }
                let run = try runIdmerge(["nightly", "--database-url", limited])
                #expect(run.status == 0, "run \(attempt): \(run.stderr)")
                #expect(run.stderr.contains("no second connection"), "run \(attempt): \(run.stderr)")
            }
            #expect(try invariantViolations(db, projectId: project.id) == 0)
            try expectDerivedTablesEqualAFullRebuild(db, projectId: project.id, "one connection")
        }
    }

    /// Connections opened ahead: one whose opening failed is passed over for the next that
    /// opened (a report connection must not sit idle while the refresh runs on fewer).
    @Test func connectionPrefetchPassesOverFailures() throws {
        try TestDatabase.withFresh { conninfo in
            final class Calls: @unchecked Sendable {
                let gate = NSLock()
                var count = 0
                func next() -> Int {
                    gate.lock()
                    defer { gate.unlock() }
                    count += 1
                    return count
                }
            }
            struct Refused: Error {}
            for _ in 0..<5 {
                let calls = Calls()
                // Whichever of the two opens first fails.
                let prefetch = ConnectionPrefetch(count: 2) {
                    if calls.next() == 1 { throw Refused() }
                    return try TestDatabase.connect(conninfo)
                }
                let first = try prefetch.take()
                #expect(try first.query("select 1 as n").first!.decode("n") as Int == 1)
                first.close()
                // The next: the failure, if it came second, or a new connection.
                do {
                    try prefetch.take().close()
                    #expect(calls.count == 3)
                } catch is Refused {
                    #expect(calls.count == 2)
                }
                prefetch.closeUntaken()
            }
        }
    }

    /// The refresh's two transactions wait, idle, for each other: a role's
    /// idle_in_transaction_session_timeout (here 1 ms, on the report connections) must not
    /// end them.
    @Test func theRefreshOutlastsAnIdleInTransactionTimeout() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let (anonymous, links) = try anonymousThenLinked(devices: 200, perDevice: 3, prefix: "idle-")
            _ = try importer.importBytes(anonymous, name: "anonymous")
            var job = NightlyJob(connection: db, project: project, logger: TestDatabase.logger)
            job.reportConnection = {
                let connection = try TestDatabase.connect(conninfo)
                try connection.execute("set idle_in_transaction_session_timeout = 1")
                return connection
            }
            _ = try job.run()
            _ = try importer.importBytes(links, name: "links")
            let run = try job.run()
            #expect(run.reportPeopleRefreshed == 200)
            try expectDerivedTablesEqualAFullRebuild(db, projectId: project.id, "with the timeout")
        }
    }

    /// A refresh left working by a run that lost its connection (and so the nightly lock)
    /// holds the refresh lock: the next run's refresh waits for it, then runs, instead of
    /// failing on the rows the other writes.
    @Test func theNextRefreshWaitsForOneStillWorking() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let (anonymous, links) = try anonymousThenLinked(devices: 10, perDevice: 2, prefix: "wait-")
            _ = try importer.importBytes(anonymous, name: "anonymous")
            _ = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
            _ = try importer.importBytes(links, name: "links")
            // The refresh still working elsewhere, as far as the lock goes.
            let other = try TestDatabase.connect(conninfo)
            try other.query("select pg_advisory_lock($1)", [NightlyJob.refreshLockKey(projectId: project.id)])
            final class Box: @unchecked Sendable { var result: Result<NightlyJob.Result, any Error>? }
            let box = Box()
            let done = DispatchSemaphore(value: 0)
            let thread = Thread {
                box.result = Result {
                    let connection = try TestDatabase.connect(conninfo)
                    defer { connection.close() }
                    var job = NightlyJob(connection: connection, project: project, logger: TestDatabase.logger)
                    job.reportConnection = { try TestDatabase.connect(conninfo) }
                    return try job.run()
                }
                done.signal()
            }
            thread.start()
            #expect(done.wait(timeout: .now() + 0.5) == .timedOut, "the run waits for the refresh lock")
            let waiting: Int = try db.query(
                """
                select count(*) as n from pg_stat_activity
                where datname = current_database() and wait_event_type = 'Lock' and wait_event = 'advisory'
                """
            ).first!.decode("n")
            #expect(waiting == 1)
            other.close()
            #expect(done.wait(timeout: .now() + 30) == .success)
            let run = try box.result!.get()
            #expect(run.reportPeopleRefreshed == 10)
            try expectDerivedTablesEqualAFullRebuild(db, projectId: project.id, "after the wait")
        }
    }

    /// Imports that make new links while the job runs: the live view is exact throughout
    /// and after.
    @Test func importsDuringTheJobKeepTheViewExact() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let (anonymous, links) = try anonymousThenLinked(devices: 600, perDevice: 3, prefix: "a")
            _ = try importer.importBytes(anonymous, name: "anonymous")
            _ = try importer.importBytes(links, name: "links")

            let done = ManagedAtomicFlag()
            let failures = ErrorBox()
            let jobThread = Thread {
                do {
                    let jobDB = try TestDatabase.connect(conninfo)
                    defer { jobDB.close() }
                    var job = NightlyJob(connection: jobDB, project: project, logger: TestDatabase.logger)
                    job.chunkSize = 3
                    // As the CLI runs it: the report tables refreshed beside the rewrite.
                    job.reportConnection = { try TestDatabase.connect(conninfo) }
                    for _ in 0..<3 { _ = try job.run() }
                } catch {
                    failures.set("\(error)")
                }
                done.set()
            }
            jobThread.start()
            var round = 0
            while round < 10 {
                // Anonymous events for new devices and links for them, in separate batches.
                let (moreAnonymous, moreLinks) = try anonymousThenLinked(
                    devices: 40, perDevice: 2, prefix: "r\(round)-")
                _ = try importer.importBytes(moreAnonymous, name: "anonymous \(round)")
                _ = try importer.importBytes(moreLinks, name: "links \(round)")
                #expect(try liveViewErrors(db, projectId: project.id) == 0, "round \(round)")
                round += 1
            }
            while !done.isSet { usleep(10_000) }
            #expect(failures.value == nil)
            _ = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
            #expect(try liveViewErrors(db, projectId: project.id) == 0)
            #expect(try invariantViolations(db, projectId: project.id) == 0)
            let stale: Int? = try db.query(
                "select cardinality(idmerge.report_stale_people($1)) as n", [project.id]
            ).first!.decode("n")
            #expect(stale == 0, "the last run brought the report tables up to date")
        }
    }
}

final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    var isSet: Bool { lock.withLock { flag } }
    func set() { lock.withLock { flag = true } }
}

final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var message: String?
    var value: String? { lock.withLock { message } }
    func set(_ text: String) { lock.withLock { message = text } }
}
