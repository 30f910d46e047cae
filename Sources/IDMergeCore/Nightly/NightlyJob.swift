import Foundation
import Logging
import PGClient

/// The nightly batch job: writes the identity map into `idmerge.events.distinct_id`, and
/// refreshes the derived report tables (``refreshReportTables(projectId:on:propsOn:)``), after
/// the rewrite or, when ``reportConnection`` is set, beside it on connections of its own.
///
/// It works in committed chunks of mappings (``chunkSize``), oldest first, through
/// `idmerge.nightly_rewrite_chunk`, so a crash (even `kill -9`) loses at most the chunk in
/// flight and the next run finishes with the same end state. A session-level advisory lock
/// per project keeps two runs from overlapping. Every run is a row of `idmerge.job_runs`.
/// The live view stays exact throughout: mappings not yet marked rewritten keep correcting
/// the events they touch.
public struct NightlyJob {
    public let connection: Connection
    public let project: Project
    public let logger: Logger
    /// Mappings per committed chunk.
    public var chunkSize = 2000
    /// Called after each chunk with the totals so far.
    public var progress: ((_ links: Int, _ rows: Int) -> Void)?
    /// Opens another connection to the same database. When set, the derived report tables
    /// are refreshed on two such connections (one when the second cannot be had) while the
    /// identity rewrite runs on ``connection``, so a run takes about the longest of the three
    /// instead of their sum. That is exact: the refresh reads the live view in one snapshot,
    /// and the live view does not depend on how far the rewrite has got
    /// (sql/150_report_tables.sql, "Exactness"). Nil, or when it throws at once: the refresh
    /// follows the rewrite on ``connection``. Called twice, one call after the other, on the
    /// refresh's thread, when the run starts; ``ConnectionPrefetch/take()`` can hand out
    /// connections opened before (the CLI opens them at process start, beside ``connection``).
    public var reportConnection: (@Sendable () throws -> Connection)?

    public init(connection: Connection, project: Project, logger: Logger) {
        self.connection = connection
        self.project = project
        self.logger = logger
    }

    /// What a run did.
    public struct Result: Sendable, Equatable {
        public var runId: Int64
        public var linksApplied: Int
        public var rowsRewritten: Int
        /// People whose rows of the derived report tables this run rewrote.
        public var reportPeopleRefreshed: Int
        /// Wall-clock seconds of the identity rewrite (the chunks), and of the refresh of the
        /// derived report tables after it.
        public var rewriteSeconds: Double = 0
        public var reportSeconds: Double = 0
    }

    /// Brings the derived report tables (migrations/0005_report_tables.sql) up to the live
    /// view: the people changed since the last refresh, or everyone the first time. One
    /// REPEATABLE READ transaction, so the tables and the ingest seq they record come from one
    /// snapshot; imports go on meanwhile, and what they add stays visible to reports through
    /// the live view. After a full rebuild, a vacuum, so reports can read the tables' indexes
    /// alone, with fresh statistics; after an incremental refresh (a few people) autovacuum is
    /// enough, so the cost follows the people changed, not the tables' size.
    ///
    /// With `props`, an incremental refresh is split in two (sql/150_report_tables.sql,
    /// "Refreshing"): `refresh_report_tables_begin` finds the stale people and their live
    /// events on `connection`, which then writes every table but `report_person_props`; `props`
    /// reads the same events again in the same snapshot (`pg_export_snapshot`), by the ctids
    /// begin returned, and rewrites their props rows in a transaction of its own, at the same
    /// time. `props` commits first and `connection` only after it (reports are exact whichever
    /// of the two commits). The two parts take about as long as each other (BENCHMARKS.md,
    /// "Nightly job, session 7" and "session 8").
    ///
    /// - Returns: the people rewritten.
    /// - Throws: ``PostgresError``; then nothing was committed, or only the props part.
    static func refreshReportTables(projectId: Int, on connection: Connection, propsOn props: Connection? = nil)
        throws -> Int
    {
        // A refresh whose client is gone (kill -9) cannot commit: its backend stops within a
        // second instead of working on beside the next run. Both transactions wait, idle, for
        // each other (the props part for begin's hand-over, this one for the props part's
        // commit): a role's idle_in_transaction_session_timeout must not end them.
        for session in [connection, props].compactMap({ $0 }) {
            try session.execute(
                "set client_connection_check_interval = '1s'; set idle_in_transaction_session_timeout = 0")
        }
        // One refresh of a project at a time, even when the run that started one has lost its
        // own connection, and with it the nightly lock (its refresh works on until it notices
        // that its client is gone): the next run's refresh waits for it, instead of failing
        // on the rows it writes. Taken before the transaction, so that its snapshot is taken
        // after the wait.
        let refreshKey = refreshLockKey(projectId: projectId)
        try connection.query("select pg_advisory_lock($1)", [refreshKey])
        defer { _ = try? connection.query("select pg_advisory_unlock($1)", [refreshKey]) }
        let (people, full) = try connection.transaction { connection -> (Int, Bool) in
            try connection.execute("set transaction isolation level repeatable read")
            // The tables are an unlogged cache (emptied by a crash; reports then read the live
            // view), so the commit need not wait for its WAL to reach the disk.
            try connection.execute("set local synchronous_commit = off")
            // The props part reads in this transaction's snapshot.
            let snapshot: String? =
                props == nil ? nil : try connection.query("select pg_export_snapshot() as s").first!.decode("s")
            // SET TRANSACTION SNAPSHOT takes no parameter: the id is checked (hex digits and
            // dashes, as PostgreSQL writes it) before it is quoted into the statement.
            if let snapshot, snapshot.isEmpty || !snapshot.allSatisfy({ $0.isHexDigit || $0 == "-" }) {
                throw PostgresError(
                    kind: .protocolViolation, code: .clientError,
                    message: "unexpected snapshot id from pg_export_snapshot(): \(snapshot)")
            }
            // The props part's transaction opens in that snapshot now, while begin runs, and
            // waits for what begin returns (nil: nothing for it to do; it then rolls back).
            let handoff = Handoff<[any PostgresBindable]>()
            let propsPart = props.map { props in
                Background(props) { props in
                    try props.transaction { props in
                        try props.execute("set transaction isolation level repeatable read")
                        try props.execute("set transaction snapshot '\(snapshot!)'")
                        try props.execute("set local synchronous_commit = off")
                        guard let parameters = handoff.take() else { throw PropsPartNotNeeded() }
                        try props.query(
                            "select idmerge.report_write_props($1, $2::text[], $3::jsonb, $4::oid[], $5::tid[], $6::text[])",
                            parameters)
                    }
                }
            }
            // Whatever happens below, the props part has ended before this returns.
            defer {
                handoff.give(nil)
                _ = propsPart?.wait()
            }
            // The stale people as an array literal, passed on as is (null: everyone), and what
            // the second step needs.
            let begun = try connection.query(
                """
                select stale::text as stale, cardinality(stale) as count, state::text as state,
                    props_partitions::text as partitions, props_ctids::text as ctids, props_people::text as people
                from idmerge.refresh_report_tables_begin($1)
                """, [projectId]
            ).first!
            let stale: String? = begun["stale"]
            let staleCount: Int? = try begun.decode("count")
            let state: String = try begun.decode("state")
            let finish = """
                select people, full_rebuild
                from idmerge.refresh_report_tables_finish($1, $2::text[], $3::jsonb, $4)
                """
            guard let propsPart, let stale, let staleCount, staleCount > 0 else {
                handoff.give(nil)
                _ = propsPart?.wait()
                let row = try connection.query(finish, [projectId, stale, state, "all"]).first!
                return (try row.decode("people"), try row.decode("full_rebuild"))
            }
            // Where the stale people's events are stored, and whose they are: the props part
            // reads them again by ctid (array literals, passed on as they are).
            let located: [String?] = [begun["partitions"], begun["ctids"], begun["people"]]
            handoff.give([projectId, stale, state, located[0], located[1], located[2]])
            let rest = Swift.Result { () throws -> (Int, Bool) in
                let row = try connection.query(finish, [projectId, stale, state, "rest"]).first!
                return (try row.decode("people"), try row.decode("full_rebuild"))
            }
            // The props part commits first (or this one rolls back).
            try propsPart.wait().get()
            return try rest.get()
        }
        if full {
            // identity_map too: the next refreshes (and report_stale_people, in every report)
            // find the links since as_of_seq by its BRIN index on seq, which the planner
            // picks only with statistics; without them it reads every link of the project,
            // as when the first nightly run follows a large import before autovacuum has
            // analyzed the map.
            try connection.execute(
                "vacuum (analyze) idmerge.report_person_events, idmerge.report_person_props, "
                    + "idmerge.report_person_ids, idmerge.identity_map")
        }
        return people
    }

    /// The refresh of the report tables beside the rewrite failed (the rewrite's committed
    /// chunks stay; reports read the stale people from the live view until the next run).
    public struct ReportRefreshFailed: Error, CustomStringConvertible {
        public var underlying: any Error
        public var description: String { "the refresh of the report tables failed: \(underlying)" }
    }

    /// Another run holds the project's nightly lock.
    public struct LockBusy: Error, CustomStringConvertible {
        public var project: String
        public var description: String {
            "another nightly run for project \(project) is in progress; try again when it ends (or run without --no-wait to wait for it)"
        }
    }

    /// The advisory-lock key of a project's nightly job.
    public static func lockKey(projectId: Int) -> Int64 {
        Connection.advisoryKey("idmerge.nightly.\(projectId)")
    }

    /// The advisory-lock key a refresh of a project's report tables holds, on its own
    /// connection, for as long as it runs (a run that lost the nightly lock may leave one
    /// working; the next one's waits for it).
    public static func refreshLockKey(projectId: Int) -> Int64 {
        Connection.advisoryKey("idmerge.nightly.refresh.\(projectId)")
    }

    /// Runs the job.
    ///
    /// - Parameter wait: when false and another run holds the lock, throws ``LockBusy`` at once.
    /// - Throws: ``LockBusy``; ``PostgresError`` (the run is recorded as failed, and the
    ///   chunks committed before the failure stay).
    public func run(wait: Bool = true) throws -> Result {
        // The refresh's connection opens at once, while this one takes the lock; the refresh
        // itself starts once the lock is held (it needs nothing of what follows it), and never
        // without it.
        let concurrentRefresh = reportConnection.map { open in
            ConcurrentRefresh(projectId: project.id, open: open)
        }
        // The lock busy or not taken: the connection closes without refreshing.
        defer {
            concurrentRefresh?.cancel()
            _ = concurrentRefresh?.wait()
        }
        let result = try connection.withAdvisoryLock(key: Self.lockKey(projectId: project.id), wait: wait) {
            () throws -> Result in
            concurrentRefresh?.begin()
            // Whatever happens below, the refresh's connection ends before the lock is let go.
            defer { _ = concurrentRefresh?.wait() }
            // Runs left 'running' by a crash cannot be running now: we hold the lock.
            try connection.query(
                """
                update idmerge.job_runs set outcome = 'failed', finished_at = coalesce(finished_at, now()),
                    message = 'interrupted (the process ended before the run finished)'
                where project_id = $1 and job = 'nightly' and outcome = 'running'
                """, [project.id])
            let runId: Int64 = try connection.query(
                "insert into idmerge.job_runs (project_id, job) values ($1, 'nightly') returning id", [project.id]
            ).first!.decode("id")
            // Links made while this run works are left to the next run.
            let maxSeq: Int64 = try connection.query(
                "select coalesce(max(seq), 0) as s from idmerge.identity_map where project_id = $1 and not rewritten",
                [project.id]
            ).first!.decode("s")
            var links = 0
            var rows = 0
            var reportPeople = 0
            var rewriteSeconds = 0.0
            var reportSeconds = 0.0
            let rewriteStart = Date()
            let serialRefresh = { () throws -> (Int, Double) in
                let start = Date()
                let people = try Self.refreshReportTables(projectId: project.id, on: connection)
                return (people, Date().timeIntervalSince(start))
            }
            do {
                while true {
                    let step = try connection.transaction { connection -> (Int, Int) in
                        // A chunk lost to a server crash is redone by the next run; the run's
                        // last statement (its outcome, a synchronous commit) flushes every
                        // chunk's WAL before the run reports success.
                        try connection.execute("set local synchronous_commit = off")
                        let row = try connection.query(
                            "select links, rows_rewritten from idmerge.nightly_rewrite_chunk($1, $2, $3)",
                            [project.id, chunkSize, maxSeq]
                        ).first!
                        let stepLinks: Int = try row.decode("links")
                        let stepRows: Int = try row.decode("rows_rewritten")
                        if stepLinks > 0 {
                            try connection.query(
                                """
                                update idmerge.job_runs set links_applied = links_applied + $2,
                                    rows_rewritten = rows_rewritten + $3
                                where id = $1
                                """, [runId, stepLinks, stepRows])
                        }
                        return (stepLinks, stepRows)
                    }
                    if step.0 == 0 { break }
                    links += step.0
                    rows += step.1
                    progress?(links, rows)
                    if step.0 < chunkSize { break }
                }
                rewriteSeconds = Date().timeIntervalSince(rewriteStart)
                switch concurrentRefresh?.wait() {
                case .refreshed(let refreshed):
                    if let error = concurrentRefresh?.propsNotConnected {
                        let reason = (error as? ConnectionFailure)?.libpqMessage ?? "\(error)"
                        logger.warning("no third connection (\(reason)): the report tables were refreshed on one")
                    }
                    do {
                        (reportPeople, reportSeconds) = try refreshed.get()
                    } catch {
                        throw ReportRefreshFailed(underlying: error)
                    }
                case .notConnected(let error):
                    // No second connection (max_connections, a pooler's limit): the refresh
                    // runs after the rewrite, on this one.
                    let reason = (error as? ConnectionFailure)?.libpqMessage ?? "\(error)"
                    logger.warning(
                        "no second connection (\(reason)): the report tables are refreshed after the rewrite")
                    (reportPeople, reportSeconds) = try serialRefresh()
                case .cancelled, nil:
                    (reportPeople, reportSeconds) = try serialRefresh()
                }
                try connection.query(
                    "update idmerge.job_runs set outcome = 'succeeded', finished_at = clock_timestamp() where id = $1",
                    [runId])
            } catch {
                // The refresh's connection must not outlive the run (nor its lock).
                _ = concurrentRefresh?.wait()
                _ = try? connection.query(
                    "update idmerge.job_runs set outcome = 'failed', finished_at = clock_timestamp(), message = $2 where id = $1",
                    [runId, String(describing: error)])
                throw error
            }
            return Result(
                runId: runId, linksApplied: links, rowsRewritten: rows, reportPeopleRefreshed: reportPeople,
                rewriteSeconds: rewriteSeconds, reportSeconds: reportSeconds)
        }
        guard let result else { throw LockBusy(project: project.name) }
        return result
    }
}

/// The props part was not needed (begin found no one stale, or everyone): it rolled back.
private struct PropsPartNotNeeded: Error {}

/// One value handed from one thread to another: ``give(_:)`` once (later calls are ignored),
/// ``take()`` waits for it.
private final class Handoff<T>: @unchecked Sendable {
    private let given = DispatchSemaphore(value: 0)
    private let gate = NSLock()
    // Under `gate`; read by the taker only after `given` is signalled.
    private var value: T?
    private var done = false

    func give(_ value: T?) {
        gate.lock()
        defer { gate.unlock() }
        guard !done else { return }
        done = true
        self.value = value
        given.signal()
    }

    func take() -> T? {
        given.wait()
        gate.lock()
        defer { gate.unlock() }
        return value
    }
}

/// Work on a connection, on a thread of its own; ``wait()`` returns its result.
private final class Background<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    // Written by the thread before it signals `done`, read only after the first wait.
    private var result: Result<T, any Error>?
    private let waitGate = NSLock()
    private var waited = false

    private let connection: Connection
    private let body: (Connection) throws -> T

    /// Starts `body` on `connection`, which nothing else may use until ``wait()`` returns.
    init(_ connection: Connection, _ body: @escaping (Connection) throws -> T) {
        self.connection = connection
        self.body = body
        let thread = Thread { [self] in
            result = Result { try self.body(self.connection) }
            done.signal()
        }
        thread.name = "idmerge.nightly.report-props"
        thread.start()
    }

    /// Blocks until the work has ended (at once after the first call).
    func wait() -> Result<T, any Error> {
        waitGate.lock()
        defer { waitGate.unlock() }
        if !waited {
            done.wait()
            waited = true
        }
        return result!
    }
}

/// The refresh of a project's derived report tables on connections of its own, on a thread of
/// its own: the connections open at once, the refresh starts at ``begin()`` (or never, after
/// ``cancel()``), and ``wait()`` returns what the thread did. The connections are closed when
/// the thread ends, whatever the outcome.
private final class ConcurrentRefresh: @unchecked Sendable {
    /// What the thread did: the refresh's result; the error that opening its connection threw
    /// (then nothing was refreshed); or nothing, cancelled before it began.
    enum Outcome {
        case refreshed(Result<(people: Int, seconds: Double), any Error>)
        case notConnected(any Error)
        case cancelled
    }
    private let done = DispatchSemaphore(value: 0)
    private let go = DispatchSemaphore(value: 0)
    private let gate = NSLock()
    // Set under `gate` before `go` is signalled, read by the thread after it.
    private var decided = false
    private var cancelled = false
    // Written by the thread before it signals `done`, read only after the wait.
    private var outcome: Outcome?
    private var waited: Outcome?
    /// Why the props part's connection could not be opened (then the refresh ran on one).
    /// Read after ``wait()``.
    private(set) var propsNotConnected: (any Error)?

    init(projectId: Int, open: @escaping @Sendable () throws -> Connection) {
        let thread = Thread { [self] in
            do {
                let connection = try open()
                defer { connection.close() }
                // The props part's (sql/150, "Refreshing"); without it, one connection does all.
                let props: Connection?
                do { props = try open() } catch {
                    props = nil
                    propsNotConnected = error
                }
                defer { props?.close() }
                go.wait()
                if cancelled {
                    outcome = .cancelled
                } else {
                    let start = Date()
                    outcome = .refreshed(
                        Result {
                            let people = try NightlyJob.refreshReportTables(
                                projectId: projectId, on: connection, propsOn: props)
                            return (people, Date().timeIntervalSince(start))
                        })
                }
            } catch {
                outcome = .notConnected(error)
            }
            done.signal()
        }
        thread.name = "idmerge.nightly.report-refresh"
        thread.start()
    }

    /// Lets the refresh start (the caller holds the project's nightly lock). Only the first of
    /// ``begin()`` and ``cancel()`` counts.
    func begin() { decide(cancel: false) }

    /// Ends the thread without refreshing, unless ``begin()`` came first.
    func cancel() { decide(cancel: true) }

    private func decide(cancel: Bool) {
        gate.lock()
        defer { gate.unlock() }
        guard !decided else { return }
        decided = true
        cancelled = cancel
        go.signal()
    }

    /// Blocks until the thread has ended (at once after the first call); call ``begin()`` or
    /// ``cancel()`` first.
    ///
    /// - Returns: what the thread did.
    func wait() -> Outcome {
        if waited == nil {
            done.wait()
            waited = outcome
        }
        return waited!
    }
}

/// A project's identity freshness, as every report states it (decisions.md, Funnels:
/// "Propagation lag").
public struct Freshness: Sendable, Equatable {
    /// The newest stored event's time (UTC), nil for an empty project.
    public var newestEventAt: Date?
    /// The end of the last successful nightly run, nil before the first.
    public var identityAsOf: Date?
    /// Identity mappings the nightly job has not yet written into the events.
    public var pendingLinks: Int
    /// Events those mappings change.
    public var pendingEvents: Int
    public var lastRunStartedAt: Date?
    public var lastRunFinishedAt: Date?
    public var lastRunOutcome: String?
    public var lastRunLinksApplied: Int?
    public var lastRunRowsRewritten: Int?

    /// Reads the project's freshness (`sql/queries/project_status.sql`). A run recorded as
    /// running whose advisory lock no session holds (killed, or its connection lost) is
    /// reported as failed, as the next run records it.
    public static func read(project: Project, on connection: Connection) throws -> Freshness {
        let row = try connection.query(
            try SQLResources.query("queries/project_status.sql"),
            [project.id, NightlyJob.lockKey(projectId: project.id)]
        ).first!
        return Freshness(
            newestEventAt: try row.decode("newest_event_at"), identityAsOf: try row.decode("identity_as_of"),
            pendingLinks: try row.decode("pending_links"), pendingEvents: try row.decode("pending_events"),
            lastRunStartedAt: try row.decode("last_run_started_at"),
            lastRunFinishedAt: try row.decode("last_run_finished_at"), lastRunOutcome: row["last_run_outcome"],
            lastRunLinksApplied: try row.decode("last_run_links_applied"),
            lastRunRowsRewritten: try row.decode("last_run_rows_rewritten"))
    }
}
