import ArgumentParser
import Foundation
import IDMergeCore

struct ActivityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "activity",
        abstract: "One person's events, newest first, found by any of their ids.",
        discussion: """
            ID is a user id, a $device:ID, or (original projects) any id of the cluster; it resolves live to \
            the person's canonical distinct_id. JSON: a list of {insert_id, event, time, distinct_id, \
            properties}. The same rows in SQL: select * from idmerge.activity(project, id, limit).
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var projectOption: ProjectOption
    @Argument(help: "Any id of the person: a user id or $device:ID.") var id: String
    @Option(help: "The most events shown (0: all of them).") var limit: Int = 100
    @Option(help: "table, csv or json.") var output: OutputFormat = .table

    func validate() throws {
        if limit < 0 { throw ValidationError("--limit must be 0 (all) or more") }
    }

    func run() throws {
        try runReporting {
            let logger = connection.makeLogger()
            let db = try connection.connect(logger: logger, applicationName: "idmerge activity")
            defer { db.close() }
            guard let project = try Projects.find(name: projectOption.project, on: db) else {
                throw ProjectError(message: "no project named \"\(projectOption.project)\"")
            }
            let feed = try ActivityFeed.run(project: project, id: id, limit: limit == 0 ? nil : limit, on: db)
            print(try ActivityFeed.render(feed.events, distinctId: feed.distinctId, as: output), terminator: "")
        }
    }
}
