import ArgumentParser
import Foundation
import IDMergeCore
import PGClient

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Newest event, the last nightly run, and links not yet rewritten.")

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var projectOption: ProjectOption
    @Option(help: "table or json") var output: StatusFormat = .table

    enum StatusFormat: String, ExpressibleByArgument, CaseIterable {
        case table, json
    }

    func run() throws {
        try runReporting {
            let logger = connection.makeLogger()
            let db = try connection.connect(logger: logger)
            defer { db.close() }
            guard let project = try Projects.find(name: projectOption.project, on: db) else {
                throw ProjectError(message: "no project named \"\(projectOption.project)\"")
            }
            let f = try Freshness.read(project: project, on: db)
            func time(_ date: Date?) -> String { date.map(PostgresTimestamp.format) ?? "never" }
            switch output {
            case .table:
                print("project:            \(project.name) (\(project.mode.rawValue))")
                print("newest event:       \(f.newestEventAt.map(PostgresTimestamp.format) ?? "none")")
                print(
                    "last nightly run:   \(f.lastRunStartedAt.map(PostgresTimestamp.format) ?? "never")\(f.lastRunOutcome.map { " (\($0))" } ?? "")"
                )
                if let links = f.lastRunLinksApplied, let rows = f.lastRunRowsRewritten {
                    print("  applied:          \(links) links, \(rows) rows rewritten")
                }
                print("identity as of:     \(time(f.identityAsOf))")
                print("pending links:      \(f.pendingLinks) (touching \(f.pendingEvents) events)")
            case .json:
                var object: [String: Any] = [
                    "project": project.name, "id_merge": project.mode.rawValue,
                    "pending_links": f.pendingLinks, "pending_events": f.pendingEvents,
                ]
                object["newest_event_at"] = f.newestEventAt.map(PostgresTimestamp.format) ?? NSNull()
                object["identity_as_of"] = f.identityAsOf.map(PostgresTimestamp.format) ?? NSNull()
                object["last_run_outcome"] = f.lastRunOutcome ?? NSNull()
                object["last_run_started_at"] = f.lastRunStartedAt.map(PostgresTimestamp.format) ?? NSNull()
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
