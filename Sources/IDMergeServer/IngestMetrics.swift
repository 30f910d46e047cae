import Foundation
import Prometheus

/// The server's Prometheus metrics, in a registry of its own (no global bootstrap, so tests can
/// run several servers in one process). `GET /metrics` writes them in the text format.
final class IngestMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let latencyBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
        .milliseconds(2500), .seconds(5), .seconds(10),
    ]
    let stored: Counter
    let refused: Counter
    let batches: Counter
    let profileUpdatesApplied: Counter
    let profileUpdatesRefused: Counter
    let rejectedFull: Counter
    let queuedEvents: Gauge
    let batchDuration: DurationHistogram
    let batchSize: ValueHistogram

    init() {
        stored = registry.makeCounter(
            descriptor: Self.name("events_stored", "total", "Events committed (new or replacing a copy)."))
        refused = registry.makeCounter(
            descriptor: Self.name("events_refused", "total", "Records refused; each is in idmerge.refused_records."))
        profileUpdatesApplied = registry.makeCounter(
            descriptor: Self.name("profile_updates_applied", "total", "Profile updates (/engage) applied."))
        profileUpdatesRefused = registry.makeCounter(
            descriptor: Self.name(
                "profile_updates_refused", "total", "Profile updates refused; each is in idmerge.refused_records."))
        batches = registry.makeCounter(
            descriptor: Self.name(
                "ingest_transactions", "total", "Import transactions committed (one or more requests)."))
        rejectedFull = registry.makeCounter(
            descriptor: Self.name("ingest_queue_full", "total", "Requests answered 429 because the queue was full."))
        queuedEvents = registry.makeGauge(
            descriptor: Self.name("ingest_queued_events", "", "Events waiting for a database worker."))
        batchDuration = registry.makeDurationHistogram(
            descriptor: Self.name("ingest_transaction_duration", "seconds", "Time of one import transaction."),
            labels: [], buckets: latencyBuckets)
        batchSize = registry.makeValueHistogram(
            descriptor: Self.name("ingest_transaction_events", "", "Records per import transaction."),
            labels: [], buckets: [1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000])
    }

    /// Counts one answered request and its latency.
    func request(endpoint: String, status: Int, duration: Duration) {
        registry.makeCounter(
            descriptor: Self.name("http_requests", "total", "HTTP requests answered, by endpoint and status."),
            labels: [("endpoint", endpoint), ("status", String(status))]
        ).increment()
        registry.makeDurationHistogram(
            descriptor: Self.name("http_request_duration", "seconds", "Time from a request's arrival to its answer."),
            labels: [("endpoint", endpoint)], buckets: latencyBuckets
        ).record(duration)
    }

    private static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "idmerge", metricName: metric, unitName: unit, helpText: help)
    }

    /// The text exposition format.
    func render() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
