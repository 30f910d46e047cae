import ArgumentParser
import Foundation
import IDMergeCore
import Logging
import PGClient

/// Options every command that talks to PostgreSQL takes.
struct ConnectionOptions: ParsableArguments {
    @Option(
        name: .customLong("database-url"),
        help: "PostgreSQL URL or key=value string (default: DATABASE_URL, then PG* variables, then the local database)."
    )
    var databaseURL: String?

    @Flag(name: .shortAndLong, help: "Log more to standard error.")
    var verbose = false

    func makeLogger() -> Logger {
        LoggingBootstrap.once()
        var logger = Logger(label: "idmerge")
        logger.logLevel = verbose ? .debug : .warning
        return logger
    }

    /// Connects as the documented precedence says; fails with a message naming what was tried.
    func connect(logger: Logger, applicationName: String = "idmerge") throws -> Connection {
        try ConnectionSettings.resolve(option: databaseURL).connect(logger: logger, applicationName: applicationName)
    }
}

/// The project a command works on.
struct ProjectOption: ParsableArguments {
    @Option(name: .long, help: "Project name.")
    var project: String = Projects.defaultName
}

enum LoggingBootstrap {
    nonisolated(unsafe) static var done = false
    static func once() {
        guard !done else { return }
        done = true
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .debug
            return handler
        }
    }
}

/// Writes a line to standard error (logs and progress; stdout is for data).
func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// Runs a command body; prints failures as `idmerge: error: ...` and maps them to exit codes.
func runReporting<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch let error as CleanExit {
        throw error
    } catch let error as ValidationError {
        throw error
    } catch {
        printError("idmerge: error: \(error)")
        throw ExitCode(1)
    }
}

/// Runs a check of a command's options, turning what it throws into a usage error (exit 64,
/// the message on standard error), so that bad options never reach the database.
func usageError(_ check: () throws -> Void) throws {
    do {
        try check()
    } catch let error as ValidationError {
        throw error
    } catch {
        throw ValidationError("\(error)")
    }
}

/// Exit codes documented in `idmerge --help` and the README.
enum ExitCodes {
    static let refusedRecords = ExitCode(3)
    static let lockBusy = ExitCode(75)
}

/// A duration such as `7d`, `1h`, `30m`, `2s`.
struct Duration: ExpressibleByArgument, Sendable {
    var seconds: Double

    init(seconds: Double) { self.seconds = seconds }

    init?(argument: String) {
        guard let parsed = try? DurationParser.seconds(argument) else { return nil }
        seconds = parsed
    }

    /// How `--help` shows a default: as the option is written, in the largest unit that
    /// divides it (`7d`, `30d`, `2s`).
    var defaultValueDescription: String {
        for (unit, size) in [("d", 86400.0), ("h", 3600.0), ("m", 60.0)]
        where seconds >= size && seconds.truncatingRemainder(dividingBy: size) == 0 {
            return "\(Int(seconds / size))\(unit)"
        }
        return seconds == seconds.rounded() ? "\(Int(seconds))s" : "\(seconds)s"
    }
}

/// Checks that every source exists, is not a directory and is readable (`-` is standard
/// input), so that an import fails before anything is written (decisions.md, Ingestion).
///
/// - Throws: ``SourceError`` naming the file and the reason.
func checkSourcesReadable(_ files: [String]) throws {
    for file in files where file != "-" {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory) else {
            throw SourceError(source: file, reason: "no such file")
        }
        guard !isDirectory.boolValue else { throw SourceError(source: file, reason: "is a directory") }
        guard FileManager.default.isReadableFile(atPath: file) else {
            throw SourceError(source: file, reason: "not readable (permission denied)")
        }
    }
}
