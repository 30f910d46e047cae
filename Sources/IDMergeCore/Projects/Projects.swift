import Foundation
import PGClient

/// A project's ID Merge API (decisions.md, "Identity: both APIs").
public enum IDMergeMode: String, Sendable, CaseIterable, Codable {
    /// Simplified ID Merge: `$device_id` + `$user_id` link (Mixpanel S-R1..S-R16). The default.
    case simplified
    /// Original ID Merge: `$identify`, `$create_alias`, `$merge` build clusters (O-R1..O-R16).
    case original
    /// ID Merge disabled: non-retroactive alias only (L-R1..L-R5).
    case legacy
}

/// A row of `idmerge.projects`.
public struct Project: Sendable, Equatable {
    public var id: Int
    public var name: String
    public var mode: IDMergeMode
    public var token: String
    public var clusterCap: Int
}

/// A newly created project with its one-time API secret.
public struct CreatedProject: Sendable {
    public var project: Project
    /// Shown once; only its SHA-256 is stored.
    public var secret: String
}

/// Errors about projects, with messages meant for the command line.
public struct ProjectError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Creating and finding projects.
public enum Projects {
    /// The project that `--project` names when it is not given.
    public static let defaultName = "default"

    /// Creates a project with a fresh token and API secret.
    ///
    /// - Throws: ``ProjectError`` when the name exists already or is empty.
    public static func create(name: String, mode: IDMergeMode, on connection: Connection) throws -> CreatedProject {
        guard !name.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw ProjectError(message: "a project name cannot be empty")
        }
        let token = randomHex(bytes: 16)
        let secret = randomHex(bytes: 24)
        do {
            let row = try connection.query(
                """
                insert into idmerge.projects (name, id_merge, token, api_secret_hash)
                values ($1, $2, $3, encode(sha256(convert_to($4, 'UTF8')), 'hex'))
                returning id, name, id_merge, token, cluster_cap
                """, [name, mode.rawValue, token, secret]
            ).first
            guard let row, let project = try decode(row) else {
                throw ProjectError(message: "project \(name) was not created")
            }
            return CreatedProject(project: project, secret: secret)
        } catch let error as PostgresError where error.code == .uniqueViolation {
            throw ProjectError(message: "project \"\(name)\" exists already; choose another name")
        }
    }

    /// Finds a project by name.
    public static func find(name: String, on connection: Connection) throws -> Project? {
        let row = try connection.query(
            "select id, name, id_merge, token, cluster_cap from idmerge.projects where name = $1", [name]
        ).first
        return try row.flatMap(decode)
    }

    /// Finds a project by its token.
    public static func find(token: String, on connection: Connection) throws -> Project? {
        let row = try connection.query(
            "select id, name, id_merge, token, cluster_cap from idmerge.projects where token = $1", [token]
        ).first
        return try row.flatMap(decode)
    }

    /// Finds a project by name, creating `default` (simplified) when that is the one asked for.
    ///
    /// - Throws: ``ProjectError`` when another name does not exist.
    public static func findOrCreateDefault(name: String, on connection: Connection) throws -> (Project, CreatedProject?)
    {
        if let project = try find(name: name, on: connection) { return (project, nil) }
        guard name == defaultName else {
            throw ProjectError(message: "no project named \"\(name)\"; create it with `idmerge project create \(name)`")
        }
        do {
            let created = try create(name: name, mode: .simplified, on: connection)
            return (created.project, created)
        } catch is ProjectError {
            // Created concurrently by another import.
            if let project = try find(name: name, on: connection) { return (project, nil) }
            throw ProjectError(message: "project \"\(name)\" could not be created")
        }
    }

    /// Checks an API secret against the stored hash, in constant time on the server's side
    /// of the comparison (both hashes have the same length).
    public static func verify(secret: String, project: Project, on connection: Connection) throws -> Bool {
        guard
            let stored = try connection.query(
                "select api_secret_hash, encode(sha256(convert_to($2, 'UTF8')), 'hex') as given from idmerge.projects where id = $1",
                [project.id, secret]
            ).first
        else { return false }
        return constantTimeEquals(stored["api_secret_hash"] ?? "", stored["given"] ?? "x")
    }

    static func decode(_ row: Row) throws -> Project? {
        guard let mode = IDMergeMode(rawValue: row["id_merge"] ?? "") else { return nil }
        return Project(
            id: try row.decode("id"), name: try row.decode("name"), mode: mode, token: try row.decode("token"),
            clusterCap: try row.decode("cluster_cap"))
    }
}

/// Compares two strings without stopping at the first difference.
public func constantTimeEquals(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8)
    let y = Array(b.utf8)
    var difference = UInt8(x.count == y.count ? 0 : 1)
    for i in 0..<max(x.count, y.count) {
        let l = i < x.count ? x[i] : 0
        let r = i < y.count ? y[i] : 0
        difference |= l ^ r
    }
    return difference == 0
}

/// Hex of `bytes` random bytes from the system's generator.
func randomHex(bytes: Int) -> String {
    var generator = SystemRandomNumberGenerator()
    var text = ""
    for _ in 0..<bytes {
        let byte = UInt8.random(in: 0...255, using: &generator)
        text += String(format: "%02x", byte)
    }
    return text
}
