import ArgumentParser
import Foundation
import IDMergeCore
import IDMergeServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve Mixpanel's ingestion API over HTTP: /track, /import, /engage, /healthz, /metrics.",
        discussion: """
            Point a Mixpanel SDK or a CDP (Segment, RudderStack) at http://HOST:PORT. /import needs the \
            project's API secret (HTTP Basic, as the user name); /track picks the project by the token \
            in the events. A success is answered only after the events are committed. SIGTERM or SIGINT \
            stops accepting, commits what is queued, and exits 0. With --port 0 a free port is chosen; \
            the address is printed on standard error.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Address to listen on.") var host = "127.0.0.1"
    @Option(help: "Port to listen on (0: any free port).") var port = 8080
    @Option(help: "Database worker threads, each with its own connection.") var workers = 4
    @Option(help: "Events that may wait for a database worker before requests are answered 429.")
    var maxQueuedEvents = 50_000

    func validate() throws {
        if !(0...65535).contains(port) { throw ValidationError("--port must be between 0 and 65535") }
        if workers < 1 { throw ValidationError("--workers must be at least 1") }
        if maxQueuedEvents < 1 { throw ValidationError("--max-queued-events must be at least 1") }
    }

    func run() async throws {
        let logger = connection.makeLogger()
        // Fail early, with the usual message, when the database cannot be reached.
        let settings = ConnectionSettings.resolve(option: connection.databaseURL)
        try runReporting { try settings.connect(logger: logger, applicationName: "idmerge serve").close() }
        var configuration = IngestServerConfiguration(conninfo: settings.conninfo)
        configuration.host = host
        configuration.port = port
        configuration.queue.workers = workers
        configuration.queue.maxQueuedEvents = maxQueuedEvents
        let server = IngestServer(configuration: configuration, logger: logger)
        let host = self.host
        do {
            try await server.run { port in printError("idmerge serve: listening on http://\(host):\(port)") }
        } catch {
            printError("idmerge: error: \(error)")
            throw ExitCode(1)
        }
    }
}
