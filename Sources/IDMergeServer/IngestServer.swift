import Foundation
import Hummingbird
import IDMergeCore
import Logging
import NIOCore
import ServiceLifecycle

/// How `idmerge serve` listens and where it stores events.
public struct IngestServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    /// 0 picks a free port (tests); ``IngestServer`` reports the one bound.
    public var port = 8080
    /// The libpq connection string of the database (passed to libpq unchanged).
    public var conninfo: String
    public var queue = IngestQueueOptions()
    /// Bytes a request body may have on the wire, before any decompression or form decoding
    /// (the decoded JSON is limited to 10 MB besides).
    public var maxBodyBytes = 32 * 1024 * 1024

    public init(conninfo: String) { self.conninfo = conninfo }
}

/// The HTTP ingest service that answers Mixpanel's ingestion API (`/track`, `/import`,
/// `/engage`), with `/healthz` and `/metrics`.
///
/// Run it with ``run(onRunning:)`` inside a process that handles signals, or build the
/// Hummingbird application with ``makeApplication(onRunning:)`` to run it in a `ServiceGroup`.
/// Shutdown is graceful: the listener closes, requests in flight finish, queued batches commit,
/// then the database connections close.
public struct IngestServer: Sendable {
    public var configuration: IngestServerConfiguration
    public var logger: Logger

    public init(configuration: IngestServerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Builds the application; `onRunning` receives the bound port once the server listens.
    public func makeApplication(
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let metrics = IngestMetrics()
        let directory = ProjectDirectory(conninfo: configuration.conninfo, logger: logger)
        let queue = IngestQueue(
            conninfo: configuration.conninfo, options: configuration.queue, metrics: metrics, logger: logger)
        let handlers = MixpanelHandlers(
            directory: directory, queue: queue, metrics: metrics, maxBodyBytes: configuration.maxBodyBytes,
            logger: logger)
        let router = Router()
        handlers.register(on: router)
        return Application(
            router: router,
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port), serverName: "idmerge"),
            services: [IngestService(queue: queue, directory: directory, logger: logger)],
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
            logger: logger
        )
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    public func run(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        try await makeApplication(onRunning: onRunning).runService(gracefulShutdownSignals: [.sigterm, .sigint])
    }
}

/// Owns the database side: starts the workers with the server and, at shutdown (after the
/// HTTP server stopped, as services stop in reverse order), commits what is queued and closes
/// the connections.
struct IngestService: Service {
    let queue: IngestQueue
    let directory: ProjectDirectory
    let logger: Logger

    func run() async throws {
        queue.start()
        try? await gracefulShutdown()
        logger.info("shutting down: committing queued events")
        await queue.shutdown()
        directory.close()
    }
}
