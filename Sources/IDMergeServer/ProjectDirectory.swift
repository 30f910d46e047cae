import Foundation
import IDMergeCore
import Logging
import PGClient

/// The projects the server answers for, cached in memory with their secret hashes.
///
/// Tokens and secrets are checked on every request, so they are checked here rather than by a
/// query each time. A miss (an unknown token, a wrong secret, a new project) reloads the list,
/// at most once a second, on a dedicated thread with its own connection: libpq never runs on
/// the server's event loop. Secrets are compared as SHA-256 hex digests in constant time and
/// are never logged.
final class ProjectDirectory: @unchecked Sendable {
    struct Entry {
        var project: Project
        var secretHash: String
    }

    private let settings: String
    private let logger: Logger
    private let queue = DispatchQueue(label: "idmerge.server.projects")
    private let lock = NSLock()
    private var entries: [Entry] = []
    private var loadedAt = Date.distantPast
    private var connection: Connection?
    private let minimumReload: TimeInterval = 1

    init(conninfo: String, logger: Logger) {
        self.settings = conninfo
        self.logger = logger
    }

    /// The project whose token is `token`.
    func project(token: String) async throws -> Project? {
        if let found = snapshot().first(where: { constantTimeEquals($0.project.token, token) }) {
            return found.project
        }
        try await reloadIfStale()
        return snapshot().first(where: { constantTimeEquals($0.project.token, token) })?.project
    }

    /// The project that `secret` opens: the one `projectKey` names (its name or id) when given,
    /// else the project whose secret it is.
    func authenticate(secret: String, projectKey: String?) async throws -> Project? {
        let hash = SecretHash.hex(secret)
        if let found = match(hash: hash, projectKey: projectKey, in: snapshot()) { return found }
        try await reloadIfStale()
        return match(hash: hash, projectKey: projectKey, in: snapshot())
    }

    private func match(hash: String, projectKey: String?, in entries: [Entry]) -> Project? {
        var found: Project?
        // Every candidate is compared, whatever matched before, so timing says nothing.
        for entry in entries {
            if let projectKey, entry.project.name != projectKey, String(entry.project.id) != projectKey { continue }
            if constantTimeEquals(entry.secretHash, hash) && found == nil { found = entry.project }
        }
        return found
    }

    private func snapshot() -> [Entry] {
        lock.lock()
        defer { lock.unlock() }
        return entries
    }

    /// Reloads the list unless it was loaded less than a second ago.
    func reloadIfStale() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            queue.async {
                do {
                    self.lock.lock()
                    let fresh = Date().timeIntervalSince(self.loadedAt) < self.minimumReload
                    self.lock.unlock()
                    if !fresh { try self.load() }
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// Runs on `queue`.
    private func load() throws {
        do {
            if connection == nil {
                connection = try Connection.connect(settings, applicationName: "idmerge serve", logger: logger)
            }
            let db = connection!
            var loaded: [Entry] = []
            for row in try db.query("select name, api_secret_hash from idmerge.projects order by id").rows {
                let name: String = try row.decode("name")
                guard let project = try Projects.find(name: name, on: db) else { continue }
                loaded.append(Entry(project: project, secretHash: row["api_secret_hash"] ?? ""))
            }
            lock.lock()
            entries = loaded
            loadedAt = Date()
            lock.unlock()
        } catch {
            connection?.close()
            connection = nil
            throw error
        }
    }

    /// Closes the connection (at shutdown).
    func close() {
        queue.sync {
            connection?.close()
            connection = nil
        }
    }
}
