import ArgumentParser
import Foundation
import IDMergeCore
import Logging
import PGClient

struct Nightly: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rewrite resolved distinct_ids on the stored events for links made since the last run.",
        discussion: """
            Works in committed chunks; a crash loses at most the chunk in flight, and the next run \
            finishes the work. The derived report tables are refreshed meanwhile on two more \
            connections (one, or none, when they cannot be had). Exit codes: 0 done; 75 another run holds the lock (with --no-wait); 1 failure.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var projectOption: ProjectOption
    @Flag(name: .customLong("no-wait"), help: "Exit with code 75 instead of waiting when another run is in progress.")
    var noWait = false
    @Option(name: .customLong("chunk-size"), help: "Identity mappings per committed chunk (at least 1).")
    var chunkSize = 2000

    func validate() throws {
        guard chunkSize >= 1 else { throw ValidationError("--chunk-size must be at least 1, not \(chunkSize)") }
    }

    func run() throws {
        try runReporting {
            let logger = connection.makeLogger()
            // Three connections open at once, each on a thread of its own: the run's (the first
            // of them that could be opened) and two for the refresh of the report tables beside
            // the identity rewrite. Where the server allows fewer, the run takes one that
            // opened, and the refresh runs on what is left, or on the run's.
            let settings = ConnectionSettings.resolve(option: connection.databaseURL)
            let connections = ConnectionPrefetch(count: 3) {
                try settings.connect(logger: logger, applicationName: "idmerge nightly")
            }
            defer { connections.closeUntaken() }
            let db = try connections.take()
            defer { db.close() }
            guard let project = try Projects.find(name: projectOption.project, on: db) else {
                throw ProjectError(message: "no project named \"\(projectOption.project)\"")
            }
            var job = NightlyJob(connection: db, project: project, logger: logger)
            job.chunkSize = chunkSize
            job.reportConnection = { try connections.take() }
            job.progress = { links, rows in printError("  \(links) links applied, \(rows) rows rewritten") }
            let start = Date()
            do {
                let result = try job.run(wait: !noWait)
                let seconds = { (value: Double) in String(format: "%.2f", value) }
                print(
                    "nightly run \(result.runId): \(result.linksApplied) links applied, \(result.rowsRewritten) rows rewritten, \(result.reportPeopleRefreshed) people refreshed in the report tables in \(seconds(Date().timeIntervalSince(start))) s (identity rewrite \(seconds(result.rewriteSeconds)) s, report tables \(seconds(result.reportSeconds)) s)"
                )
            } catch let busy as NightlyJob.LockBusy {
                printError("idmerge: \(busy)")
                throw ExitCodes.lockBusy
            }
        }
    }
}
