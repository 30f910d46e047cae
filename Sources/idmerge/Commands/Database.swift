import ArgumentParser
import Foundation
import IDMergeCore

struct Database: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db",
        abstract: "Run a local PostgreSQL under ./.idmerge (IDMERGE_HOME overrides).",
        subcommands: [Start.self, Stop.self, Status.self]
    )

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the local cluster on first use (initdb) and start it; prints its URL.")

        func run() throws {
            try runReporting {
                let local = LocalDatabase.fromEnvironment()
                let url = try local.start(progress: { printError($0) })
                print(url)
            }
        }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop the local database cleanly.")

        func run() throws {
            try runReporting {
                let local = LocalDatabase.fromEnvironment()
                try local.stop()
                printError("stopped")
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print whether the local database runs, and its connection URL.")

        func run() throws {
            try runReporting {
                let local = LocalDatabase.fromEnvironment()
                guard let layout = local.layout() else {
                    print("not created (run `idmerge db start`)")
                    throw ExitCode(1)
                }
                let running = local.isRunning()
                print("status: \(running ? "running" : "stopped")")
                print("url: \(LocalDatabase.url(for: layout))")
                print("data: \(layout.dataDirectory)")
                if !running { throw ExitCode(1) }
            }
        }
    }
}
