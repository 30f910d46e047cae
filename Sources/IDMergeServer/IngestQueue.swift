import Foundation
import IDMergeCore
import Logging
import PGClient

/// A record that an import refused, as the request that sent it numbers it.
struct Refusal: Sendable, Equatable {
    /// 0-based index of the record in its request.
    var index: Int
    var insertId: String?
    var field: String
    var reason: String
}

/// What a request carries: events (`/track`, `/import`) or profile updates (`/engage`).
enum IngestKind: Sendable, Equatable {
    case events
    case profiles
}

/// What became of one request's events.
enum IngestOutcome: Sendable {
    /// Committed: every record is stored, a duplicate, ignored, or refused (listed).
    case committed(records: Int, refusals: [Refusal])
    /// The queue is full: answer 429 and let the client retry.
    case full
    /// The server is shutting down and takes no more work.
    case closing
    /// The database failed; nothing of the request was committed.
    case failed(String)
}

/// Configuration of the ingest queue.
public struct IngestQueueOptions: Sendable {
    /// Database worker threads, each with its own connection.
    public var workers = 4
    /// Events that may wait for a worker; beyond, requests are answered 429.
    public var maxQueuedEvents = 50_000
    /// Events one transaction takes from the queue at most (requests are never split).
    public var maxTransactionEvents = 10_000
    /// Workers that may serve one project at once. PostgreSQL serializes a project's merges
    /// with its advisory lock, but a second worker can parse and COPY the next batch meanwhile
    /// (2 measured no faster on 2 cores than 1, so 1 keeps batches strictly in arrival order).
    public var workersPerProject = 1

    public init() {}
}

/// A bounded queue feeding a small pool of database threads, which commit requests in
/// shared transactions.
///
/// A worker takes every waiting request of one project (up to ``IngestQueueOptions/maxTransactionEvents``
/// events), joins their records into one JSON array and imports it in one transaction with
/// ``Importer`` (events) or ``ProfileImporter`` (profile updates), then hands each request its own refusals. A project's batches are serialized
/// by its advisory lock in PostgreSQL anyway, so at most ``IngestQueueOptions/workersPerProject``
/// workers serve a project at once and the others
/// serve other projects. Requests are resumed only after COMMIT returned. libpq runs
/// on these threads only, never on the server's event loop.
final class IngestQueue: @unchecked Sendable {
    private struct Job {
        var kind: IngestKind
        var project: Project
        var allowMerge: Bool
        var payload: SplitPayload
        var source: String
        var continuation: CheckedContinuation<IngestOutcome, Never>
    }

    private let conninfo: String
    private let options: IngestQueueOptions
    private let metrics: IngestMetrics
    private let logger: Logger
    private let condition = NSCondition()
    private var pending: [Job] = []
    private var queuedEvents = 0
    private var busyProjects: [Int: Int] = [:]
    private var closed = false
    private let running = DispatchGroup()
    private var started = false

    init(conninfo: String, options: IngestQueueOptions, metrics: IngestMetrics, logger: Logger) {
        self.conninfo = conninfo
        self.options = options
        self.metrics = metrics
        self.logger = logger
    }

    /// Starts the worker threads.
    func start() {
        condition.lock()
        defer { condition.unlock() }
        guard !started else { return }
        started = true
        for number in 0..<max(1, options.workers) {
            running.enter()
            let thread = Thread { [self] in
                self.work()
                self.running.leave()
            }
            thread.name = "idmerge-ingest-\(number)"
            thread.start()
        }
    }

    /// Queues a request's records and waits until they are committed (or refused).
    ///
    /// - Parameters:
    ///   - kind: events go through ``Importer``, profile updates through ``ProfileImporter``;
    ///     requests of one kind, project and `allowMerge` share transactions.
    func submit(
        _ kind: IngestKind = .events, project: Project, allowMerge: Bool, payload: SplitPayload, source: String
    ) async -> IngestOutcome {
        await withCheckedContinuation { continuation in
            condition.lock()
            if closed {
                condition.unlock()
                continuation.resume(returning: .closing)
                return
            }
            // A request larger than the whole queue is still taken when the queue is empty.
            if queuedEvents > 0 && queuedEvents + payload.count > options.maxQueuedEvents {
                condition.unlock()
                metrics.rejectedFull.increment()
                continuation.resume(returning: .full)
                return
            }
            pending.append(
                Job(
                    kind: kind, project: project, allowMerge: allowMerge, payload: payload, source: source,
                    continuation: continuation))
            queuedEvents += payload.count
            metrics.queuedEvents.set(Double(queuedEvents))
            condition.signal()
            condition.unlock()
        }
    }

    /// Stops taking requests, commits those already queued, and closes the connections.
    func shutdown() async {
        guard close() else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            running.notify(queue: .global()) { continuation.resume() }
        }
    }

    /// Marks the queue closed; returns whether workers were started.
    private func close() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        condition.broadcast()
        return started
    }

    var queuedEventCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return queuedEvents
    }

    // MARK: Workers

    private func work() {
        var connection: Connection?
        defer { connection?.close() }
        while let group = nextGroup() {
            process(group, connection: &connection)
            condition.lock()
            busyProjects[group[0].project.id, default: 1] -= 1
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Waits for work: the queued requests of the first project with a worker to spare.
    /// Nil once the queue is closed and empty.
    private func nextGroup() -> [Job]? {
        condition.lock()
        defer { condition.unlock() }
        while true {
            let limit = max(1, options.workersPerProject)
            if let first = pending.firstIndex(where: { busyProjects[$0.project.id, default: 0] < limit }) {
                let head = pending[first]
                var group: [Job] = []
                var events = 0
                var remaining: [Job] = []
                remaining.reserveCapacity(pending.count)
                for (index, job) in pending.enumerated() {
                    let joins =
                        index == first
                        || (head.payload.embeddable && job.payload.embeddable && job.kind == head.kind
                            && job.project.id == head.project.id
                            && job.allowMerge == head.allowMerge && index > first
                            && events + job.payload.count <= options.maxTransactionEvents)
                    if joins {
                        group.append(job)
                        events += job.payload.count
                    } else {
                        remaining.append(job)
                    }
                }
                pending = remaining
                queuedEvents -= events
                metrics.queuedEvents.set(Double(queuedEvents))
                busyProjects[head.project.id, default: 0] += 1
                return group
            }
            if closed && pending.isEmpty { return nil }
            condition.wait()
        }
    }

    private func process(_ group: [Job], connection: inout Connection?) {
        do {
            let results = try importGroup(group, connection: &connection)
            for (job, refusals) in zip(group, results) {
                job.continuation.resume(returning: .committed(records: job.payload.count, refusals: refusals))
            }
        } catch {
            connection?.close()
            connection = nil
            guard group.count > 1 else {
                logger.error("import failed: \(error)")
                group[0].continuation.resume(returning: .failed("the database failed; nothing was stored"))
                return
            }
            // One request may be the cause: each on its own, so the others still commit.
            logger.warning("a shared import of \(group.count) requests failed (\(error)); retrying one by one")
            for job in group { process([job], connection: &connection) }
        }
    }

    /// Imports the group in one transaction; returns each job's refusals.
    private func importGroup(_ group: [Job], connection: inout Connection?) throws -> [[Refusal]] {
        if connection == nil {
            connection = try Connection.connect(conninfo, applicationName: "idmerge serve", logger: logger)
        }
        let db = connection!
        let head = group[0]
        let bytes: [UInt8]
        var offsets: [Int] = []
        let joined = head.payload.embeddable
        if joined {
            var combined: [UInt8] = [UInt8(ascii: "[")]
            combined.reserveCapacity(group.reduce(2) { $0 + $1.payload.bytes.count + $1.payload.count })
            var index = 0
            for job in group {
                offsets.append(index)
                for range in job.payload.records {
                    if index > 0 { combined.append(UInt8(ascii: ",")) }
                    combined.append(contentsOf: job.payload.bytes[range])
                    combined.append(0x0A)
                    index += 1
                }
            }
            combined.append(UInt8(ascii: "]"))
            bytes = combined
        } else {
            bytes = head.payload.bytes
            offsets = [0]
        }
        let name = group.count == 1 ? head.source : "\(head.source) +\(group.count - 1) requests"
        let clock = ContinuousClock()
        let started = clock.now
        let batchId: Int64
        let refused: Int
        switch head.kind {
        case .events:
            let importer = Importer(connection: db, project: head.project, logger: logger)
            importer.allowMerge = head.allowMerge
            let summary = try importer.importBytes(bytes, name: name)
            (batchId, refused) = (summary.batchId, summary.refused)
            metrics.stored.increment(by: Int64(summary.records - summary.refused))
            metrics.refused.increment(by: Int64(summary.refused))
            metrics.batchSize.record(Double(summary.records))
        case .profiles:
            let summary = try ProfileImporter(connection: db, project: head.project, logger: logger)
                .importBytes(bytes, name: name)
            (batchId, refused) = (summary.batchId, summary.refused)
            metrics.profileUpdatesApplied.increment(by: Int64(summary.applied))
            metrics.profileUpdatesRefused.increment(by: Int64(summary.refused))
        }
        metrics.batchDuration.record(clock.now - started)
        metrics.batches.increment()
        var results = [[Refusal]](repeating: [], count: group.count)
        guard refused > 0 else { return results }
        let rows = try db.query(
            """
            select position, position_kind, insert_id, field, reason from idmerge.refused_records
            where batch_id = $1 order by position
            """, [batchId])
        for row in rows.rows {
            let position: Int = try row.decode("position")
            let kind: String = row["position_kind"] ?? "index"
            let field: String = row["field"] ?? "(record)"
            let reason: String = row["reason"] ?? ""
            if joined {
                // Global index in the joined array: find its request.
                var job = offsets.count - 1
                while job > 0 && offsets[job] > position { job -= 1 }
                results[job].append(
                    Refusal(index: position - offsets[job], insertId: row["insert_id"], field: field, reason: reason))
            } else {
                results[0].append(
                    Refusal(
                        index: head.payload.index(position: position, kind: kind), insertId: row["insert_id"],
                        field: field, reason: reason))
            }
        }
        return results
    }
}
