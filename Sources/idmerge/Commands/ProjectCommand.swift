import ArgumentParser
import Foundation
import IDMergeCore

extension IDMergeMode: ExpressibleByArgument {}

struct ProjectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "project", abstract: "Manage projects.", subcommands: [Create.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a project; prints its token and, once, its API secret.")

        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "Project name.") var name: String
        @Option(name: .customLong("id-merge"), help: "ID Merge API: simplified, original or legacy.")
        var idMerge: IDMergeMode = .simplified

        func run() throws {
            try runReporting {
                let logger = connection.makeLogger()
                let db = try connection.connect(logger: logger)
                defer { db.close() }
                let created = try Projects.create(name: name, mode: idMerge, on: db)
                print("token: \(created.project.token)")
                print("secret: \(created.secret)")
                printError("project \(name) created (\(idMerge.rawValue)); keep the secret: it is not shown again")
            }
        }
    }
}
