import Foundation

/// The embedded default database: a private PostgreSQL cluster that `idmerge db start` runs.
///
/// Its home is `./.idmerge` (or `IDMERGE_HOME`). The server listens only on a Unix socket,
/// with `trust` authentication for the socket (the socket's folder is private to the owner).
///
/// PostgreSQL refuses to run as root, so when started by root the server runs as the
/// unprivileged `postgres` user, and the cluster's files live under `/var/lib/idmerge/<key>`
/// (a folder that user can reach even when the home is under `/root`); `cluster.json` in the
/// home records where. For an ordinary user everything lives in the home, except the socket
/// when the home's path is too long for a socket name (then `/tmp/idmerge-<key>`).
public struct LocalDatabase: Sendable {
    /// The home folder (absolute).
    public let home: URL

    /// Where the cluster's files are and whom they belong to.
    public struct Layout: Codable, Sendable, Equatable {
        public var dataDirectory: String
        public var socketDirectory: String
        public var port: Int
        public var databaseName: String
        public var user: String
        /// The OS user that runs the server (`postgres` when started as root).
        public var osUser: String?
        public var logFile: String
    }

    public init(home: URL) { self.home = home.standardizedFileURL }

    /// The home from `IDMERGE_HOME`, else `./.idmerge`.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment)
        -> LocalDatabase
    {
        if let path = environment["IDMERGE_HOME"], !path.isEmpty {
            return LocalDatabase(home: URL(fileURLWithPath: path, isDirectory: true))
        }
        let cwd = URL(fileURLWithPath: FileManager.default.currentDirectoryPath, isDirectory: true)
        return LocalDatabase(home: cwd.appendingPathComponent(".idmerge", isDirectory: true))
    }

    var layoutFile: URL { home.appendingPathComponent("cluster.json") }

    /// The recorded layout, or `nil` when the cluster was never created.
    public func layout() -> Layout? {
        guard let data = try? Data(contentsOf: layoutFile) else { return nil }
        return try? JSONDecoder().decode(Layout.self, from: data)
    }

    /// A libpq URL for the cluster, for example
    /// `postgresql://postgres@%2Fvar%2Flib%2Fidmerge%2Fab12%2Fsocket:5432/idmerge`.
    public static func url(for layout: Layout) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        let host =
            layout.socketDirectory.addingPercentEncoding(withAllowedCharacters: allowed) ?? layout.socketDirectory
        return "postgresql://\(layout.user)@\(host):\(layout.port)/\(layout.databaseName)"
    }

    /// True when the server of the recorded layout is running (its socket exists and
    /// `pg_ctl status` agrees).
    public func isRunning() -> Bool {
        guard let layout = layout() else { return false }
        guard FileManager.default.fileExists(atPath: "\(layout.socketDirectory)/.s.PGSQL.\(layout.port)") else {
            return false
        }
        guard let bin = try? Self.binDirectory() else { return false }
        let result = try? run(layout: layout, bin + "/pg_ctl", ["-D", layout.dataDirectory, "status"])
        return result?.status == 0
    }

    /// Creates the cluster on first use (initdb), starts it, and creates its database.
    ///
    /// - Returns: the connection URL.
    /// - Throws: ``LocalDatabaseError`` naming the command that failed and its output.
    @discardableResult
    public func start(progress: (String) -> Void = { _ in }) throws -> String {
        do {
            return try startCluster(progress: progress)
        } catch let error as LocalDatabaseError {
            throw error
        } catch {
            // Foundation's file errors, as one plain sentence naming the folder.
            let reason = (error as NSError).localizedDescription
            throw LocalDatabaseError(message: "cannot use \(home.path) for the local database: \(reason)")
        }
    }

    private func startCluster(progress: (String) -> Void) throws -> String {
        let bin = try Self.binDirectory()
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
        var layout = layout() ?? newLayout()
        if self.layout() == nil
            && FileManager.default.fileExists(atPath: layout.dataDirectory + "/PG_VERSION")
        {
            // A cluster made for this home before its record was lost: adopt it.
            try prepareDirectories(layout)
            try JSONEncoder.pretty.encode(layout).write(to: layoutFile)
        } else if self.layout() == nil {
            try prepareDirectories(layout)
            progress("initdb: creating a cluster in \(layout.dataDirectory)")
            _ = try runChecked(
                layout: layout, bin + "/initdb",
                [
                    "-D", layout.dataDirectory, "-U", layout.user, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8",
                    "--no-instructions",
                ])
            try appendSettings(layout)
            let data = try JSONEncoder.pretty.encode(layout)
            try data.write(to: layoutFile)
        } else {
            try prepareDirectories(layout)
        }
        if !isRunning() {
            progress("starting PostgreSQL (log: \(layout.logFile))")
            _ = try runChecked(
                layout: layout, bin + "/pg_ctl",
                [
                    "-D", layout.dataDirectory, "-l", layout.logFile, "-w", "-t", "60", "-o",
                    "-c listen_addresses='' -c unix_socket_directories='\(layout.socketDirectory)' -c port=\(layout.port)",
                    "start",
                ])
        }
        // Create the database when missing.
        let psql = bin + "/psql"
        let exists = try runChecked(
            layout: layout, psql,
            [
                "-X", "-q", "-A", "-t", "-h", layout.socketDirectory, "-p", String(layout.port), "-U", layout.user,
                "-d", "postgres", "-c", "select 1 from pg_database where datname = 'idmerge'",
            ])
        if exists.output.trimmingCharacters(in: .whitespacesAndNewlines) != "1" {
            _ = try runChecked(
                layout: layout, bin + "/createdb",
                ["-h", layout.socketDirectory, "-p", String(layout.port), "-U", layout.user, layout.databaseName])
        }
        layout = self.layout() ?? layout
        return Self.url(for: layout)
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`). Stopping a stopped server is not an error.
    public func stop() throws {
        guard let layout = layout() else { return }
        guard isRunning() else { return }
        let bin = try Self.binDirectory()
        _ = try runChecked(layout: layout, bin + "/pg_ctl", ["-D", layout.dataDirectory, "-m", "fast", "-w", "stop"])
    }

    private func newLayout() -> Layout {
        let key = String(format: "%016llx", UInt64(bitPattern: fnv1a(home.path)))
        if getuid() == 0 {
            let base = "/var/lib/idmerge/\(key)"
            return Layout(
                dataDirectory: base + "/data", socketDirectory: base + "/socket", port: 5432,
                databaseName: "idmerge", user: "postgres", osUser: "postgres", logFile: base + "/postgresql.log")
        }
        var socket = home.appendingPathComponent("socket").path
        if socket.utf8.count + 20 > 100 { socket = "/tmp/idmerge-\(key)" }
        let user = ProcessInfo.processInfo.environment["USER"].flatMap { $0.isEmpty ? nil : $0 } ?? "idmerge"
        return Layout(
            dataDirectory: home.appendingPathComponent("data").path, socketDirectory: socket, port: 5432,
            databaseName: "idmerge", user: user, osUser: nil,
            logFile: home.appendingPathComponent("postgresql.log").path)
    }

    private func prepareDirectories(_ layout: Layout) throws {
        let fm = FileManager.default
        let dataParent = URL(fileURLWithPath: layout.dataDirectory).deletingLastPathComponent().path
        for path in [dataParent, layout.socketDirectory] {
            try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        if let osUser = layout.osUser {
            guard let pw = getpwnam(osUser) else {
                throw LocalDatabaseError(
                    message:
                        "running as root needs the unprivileged user '\(osUser)' to run PostgreSQL; install the postgresql package (it creates that user) or run as an ordinary user"
                )
            }
            for path in [dataParent, layout.socketDirectory] {
                chown(path, pw.pointee.pw_uid, pw.pointee.pw_gid)
                chmod(path, 0o700)
            }
            if fm.fileExists(atPath: layout.dataDirectory) {
                chown(layout.dataDirectory, pw.pointee.pw_uid, pw.pointee.pw_gid)
            }
        } else {
            chmod(layout.socketDirectory, 0o700)
        }
    }

    private func appendSettings(_ layout: Layout) throws {
        let settings = """

            # Added by idmerge db start: settings for batch imports and reports on a small machine.
            shared_buffers = '512MB'
            work_mem = '64MB'
            maintenance_work_mem = '512MB'
            max_wal_size = '4GB'
            checkpoint_timeout = '15min'
            wal_level = 'minimal'
            max_wal_senders = 0
            synchronous_commit = 'on'
            temp_buffers = '64MB'

            """
        let path = layout.dataDirectory + "/postgresql.conf"
        if getuid() == 0 {
            // The file belongs to the server's user; root may still append to it.
            guard let handle = FileHandle(forWritingAtPath: path) else {
                throw LocalDatabaseError(message: "cannot open \(path) to add settings")
            }
            handle.seekToEndOfFile()
            handle.write(Data(settings.utf8))
            handle.closeFile()
        } else {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            handle.seekToEndOfFile()
            handle.write(Data(settings.utf8))
            try handle.close()
        }
    }

    /// `pg_config --bindir`, falling back to the newest `/usr/lib/postgresql/*/bin`.
    public static func binDirectory() throws -> String {
        if let output = try? Subprocess.run("pg_config", ["--bindir"]), output.status == 0 {
            let path = output.output.trimmingCharacters(in: .whitespacesAndNewlines)
            if FileManager.default.isExecutableFile(atPath: path + "/initdb") { return path }
        }
        let base = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [])
            .compactMap { Int($0) }.sorted(by: >)
        for version in versions where FileManager.default.isExecutableFile(atPath: "\(base)/\(version)/bin/initdb") {
            return "\(base)/\(version)/bin"
        }
        throw LocalDatabaseError(
            message:
                "PostgreSQL server binaries not found (pg_config --bindir has no initdb); install them: apt-get update && apt-get install -y postgresql libpq-dev pkg-config"
        )
    }

    private func run(layout: Layout, _ executable: String, _ arguments: [String]) throws -> Subprocess.Output {
        if let osUser = layout.osUser, getuid() == 0 {
            return try Subprocess.run("runuser", ["-u", osUser, "--", executable] + arguments, directory: "/")
        }
        return try Subprocess.run(executable, arguments)
    }

    private func runChecked(layout: Layout, _ executable: String, _ arguments: [String]) throws -> Subprocess.Output {
        let output = try run(layout: layout, executable, arguments)
        guard output.status == 0 else {
            let name = URL(fileURLWithPath: executable).lastPathComponent
            throw LocalDatabaseError(
                message:
                    "\(name) failed (exit \(output.status)): \(output.output.trimmingCharacters(in: .whitespacesAndNewlines))"
            )
        }
        return output
    }
}

/// A failure of the local database commands, with the failing tool's own output.
public struct LocalDatabaseError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

func fnv1a(_ text: String) -> Int64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
    }
    return Int64(bitPattern: hash)
}

extension JSONEncoder {
    static var pretty: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return encoder
    }
}

/// Runs a program and collects its combined output.
///
/// Uses `posix_spawn` with the output sent to a temporary file rather than a pipe: a server
/// that `pg_ctl start` leaves running must not hold the caller's pipe open.
enum Subprocess {
    struct Output {
        var status: Int32
        var output: String
    }

    static func run(_ executable: String, _ arguments: [String], directory: String? = nil) throws -> Output {
        let path: String
        if executable.contains("/") {
            path = executable
        } else {
            let searchPath =
                ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
            guard
                let found = searchPath.split(separator: ":").map({ "\($0)/\(executable)" })
                    .first(where: { FileManager.default.isExecutableFile(atPath: $0) })
            else {
                throw LocalDatabaseError(message: "\(executable) not found on PATH")
            }
            path = found
        }
        var template = Array("/tmp/idmerge-subprocess-XXXXXX".utf8CString)
        let outputFD = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard outputFD >= 0 else { throw LocalDatabaseError(message: "cannot create a temporary file") }
        let outputPath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer {
            close(outputFD)
            unlink(outputPath)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outputFD, 1)
        posix_spawn_file_actions_adddup2(&actions, outputFD, 2)
        var command = [path] + arguments
        if let directory { command = ["/usr/bin/env", "-C", directory] + command }
        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, command[0], &actions, nil, argv, environ)
        guard spawned == 0 else {
            throw LocalDatabaseError(message: "cannot run \(path): \(String(cString: strerror(spawned)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let data = (try? Data(contentsOf: URL(fileURLWithPath: outputPath))) ?? Data()
        let exitStatus: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Output(status: exitStatus, output: String(decoding: data, as: UTF8.self))
    }
}
