import Foundation
import HTTPTypes
import Hummingbird
import IDMergeCore
import Logging
import NIOCore
import PGClient

/// The endpoints, answering as Mixpanel's ingestion API does (mixpanel-reference.md §4, §3
/// P-R11; decisions.md "Ingestion").
struct MixpanelHandlers: Sendable {
    let directory: ProjectDirectory
    let queue: IngestQueue
    let metrics: IngestMetrics
    let maxBodyBytes: Int
    let logger: Logger

    func register(on router: Router<BasicRequestContext>) {
        // The router treats `/track/` (as some SDKs and CDPs write it) as `/track`.
        router.post("/track") { request, _ in await measured("track", request) { try await track($0) } }
        router.get("/track") { request, _ in await measured("track", request) { try await track($0) } }
        router.post("/import") { request, _ in await measured("import", request) { try await importEvents($0) } }
        router.post("/engage") { request, _ in await measured("engage", request) { try await engage($0) } }
        router.get("/engage") { request, _ in await measured("engage", request) { try await engage($0) } }
        router.post("/groups") { request, _ in await measured("groups", request) { _ in groups() } }
        router.get("/healthz") { _, _ in
            Response.json(.ok, "{\"status\":\"ok\",\"queued_events\":\(queue.queuedEventCount)}")
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
    }

    /// Runs a handler, turning a payload error into its 400 or 413 and recording the metrics.
    private func measured(
        _ endpoint: String, _ request: Request, _ body: (Request) async throws -> Response
    ) async -> Response {
        let clock = ContinuousClock()
        let started = clock.now
        var response: Response
        do {
            response = try await body(request)
        } catch let error as PayloadError {
            response = errorResponse(error, endpoint: endpoint, request: request)
        } catch is NIOTooManyBytesError {
            response = errorResponse(
                .tooLarge("request exceeds max limit of \(maxBodyBytes) bytes"), endpoint: endpoint, request: request)
        } catch let error as PostgresError {
            logger.error("\(endpoint): \(error)")
            response = Response.json(
                .serviceUnavailable,
                #"{"code":503,"error":"the server could not reach its database; retry later","status":"Service Unavailable"}"#
            )
        } catch {
            // Anything else failed while reading the request (broken chunked framing, a client
            // that went away mid-body): the request's fault, not worth a retry.
            logger.warning("\(endpoint): could not read the request: \(error)")
            response = errorResponse(
                .malformed("could not read the request body: \(error)"), endpoint: endpoint, request: request)
        }
        metrics.request(endpoint: endpoint, status: response.status.code, duration: clock.now - started)
        return response
    }

    private func errorResponse(_ error: PayloadError, endpoint: String, request: Request) -> Response {
        let status: HTTPResponse.Status = error.kind == .tooLarge ? .contentTooLarge : .badRequest
        if endpoint == "track" || endpoint == "engage" {
            return trackResponse(status: status, error: error.reason, verbose: parameter("verbose", request) == "1")
        }
        let statusText = error.kind == .tooLarge ? "Request Entity Too Large" : "Bad Request"
        return Response.json(
            status, "{\"code\":\(status.code),\"error\":\(JSON.string(error.reason)),\"status\":\"\(statusText)\"}")
    }

    // MARK: /track

    private func track(_ request: Request) async throws -> Response {
        let (fields, body) = try await formAndBody(request)
        let verbose = fields["verbose"] == "1"
        let json: [UInt8]
        if let data = fields["data"] {
            json = try Payload.decodeDataField(data)
        } else if Payload.firstNonWhitespace(body) != nil {
            json = body  // a JSON body, as the OpenAPI also models it
        } else {
            throw PayloadError.malformed("missing the data parameter")
        }
        var payload = try Payload.split(json, singleObject: true)
        // The token in the events picks the project; all of one request's events name one.
        let token = try Self.projectToken(payload, what: "events", name: "properties.token") {
            ($0["properties"] as? [String: Any])?["token"]
        }
        guard let project = try await directory.project(token: token) else {
            return trackResponse(status: .unauthorized, error: "unknown project token", verbose: verbose)
        }
        payload = Payload.defaultTime(payload, nowMillis: Self.nowMillis(), all: true)
        // decisions.md: $merge is accepted only through authenticated import, never /track.
        let outcome = await queue.submit(project: project, allowMerge: false, payload: payload, source: "http /track")
        switch outcome {
        case .committed(_, let refusals):
            if refusals.isEmpty { return trackResponse(status: .ok, error: nil, verbose: verbose) }
            let first = refusals[0]
            let message =
                "\(refusals.count) of \(payload.count) events refused; event \(first.index): \(Self.message(first))"
            return trackResponse(status: .ok, error: message, verbose: verbose)
        default:
            return unavailable(outcome)
        }
    }

    private func trackResponse(status: HTTPResponse.Status, error: String?, verbose: Bool) -> Response {
        if verbose {
            let body =
                error.map { "{\"status\":0,\"error\":\(JSON.string($0))}" } ?? #"{"status":1,"error":null}"#
            return Response.json(status, body)
        }
        return Response(
            status: status, headers: [.contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: error == nil ? "1" : "0")))
    }

    // MARK: /import

    private func importEvents(_ request: Request) async throws -> Response {
        guard let secret = Self.basicSecret(request.headers[.authorization]),
            let project = try await directory.authenticate(
                secret: secret, projectKey: parameter("project_id", request))
        else {
            return Response.json(.unauthorized, #"{"code":401,"error":"Invalid credentials","status":"Unauthorized"}"#)
        }
        let (fields, body) = try await formAndBody(request)
        let strict = fields["strict"] == "1"
        let sdkStyle = fields["data"] != nil
        let json: [UInt8]
        if let data = fields["data"] {
            json = try Payload.decodeDataField(data)
        } else {
            json = body
        }
        var payload = try Payload.split(json, singleObject: sdkStyle)
        payload = Payload.defaultTime(payload, nowMillis: Self.nowMillis(), all: false)
        let outcome = await queue.submit(project: project, allowMerge: true, payload: payload, source: "http /import")
        guard case .committed(let records, let refusals) = outcome else { return unavailable(outcome) }
        let imported = records - refusals.count
        if sdkStyle && fields["verbose"] == "1" {
            let error = refusals.first.map {
                "\(refusals.count) of \(records) events refused; event \($0.index): \(Self.message($0))"
            }
            return trackResponse(status: refusals.isEmpty ? .ok : .badRequest, error: error, verbose: true)
        }
        if refusals.isEmpty || !strict {
            return Response.json(.ok, "{\"code\":200,\"num_records_imported\":\(imported),\"status\":\"OK\"}")
        }
        return failedRecords(refusals, imported: imported)
    }

    /// The `strict=1` answer: 400 with each refused record's index, `$insert_id`, field and reason.
    private func failedRecords(_ refusals: [Refusal], imported: Int) -> Response {
        var failed: [String] = []
        for refusal in refusals {
            failed.append(
                "{\"index\":\(refusal.index),\"$insert_id\":\(refusal.insertId.map(JSON.string) ?? "null"),"
                    + "\"field\":\(JSON.string(refusal.field)),\"message\":\(JSON.string(Self.message(refusal)))}")
        }
        return Response.json(
            .badRequest,
            "{\"code\":400,\"error\":\"some data points in the request failed validation\",\"failed_records\":["
                + failed.joined(separator: ",")
                + "],\"num_records_imported\":\(imported),\"status\":\"Bad Request\"}")
    }

    // MARK: /engage

    /// Profile updates (mixpanel-reference.md §3): `data=` (JSON or base64 JSON, form or query)
    /// or a JSON body holding one update object or an array of them, each naming the project by
    /// `$token` (P-R2). Answers as P-R11: 200 with `1`, or `0` when any update was refused
    /// (`verbose=1`: `{"status":1,"error":null}` or the error); `strict=1` answers 400 with
    /// `failed_records` when any update was refused. Refused updates are kept in
    /// `idmerge.refused_records`; the others are applied.
    private func engage(_ request: Request) async throws -> Response {
        let (fields, body) = try await formAndBody(request)
        let verbose = fields["verbose"] == "1"
        let strict = fields["strict"] == "1"
        let json: [UInt8]
        if let data = fields["data"] {
            json = try Payload.decodeDataField(data)
        } else if Payload.firstNonWhitespace(body) != nil {
            json = body
        } else {
            throw PayloadError.malformed("missing the data parameter")
        }
        let payload = try Payload.split(json, singleObject: true)
        let token = try Self.projectToken(payload, what: "profile updates", name: "$token") { $0["$token"] }
        guard let project = try await directory.project(token: token) else {
            return trackResponse(status: .unauthorized, error: "unknown project token", verbose: verbose)
        }
        let outcome = await queue.submit(
            .profiles, project: project, allowMerge: false, payload: payload, source: "http /engage")
        guard case .committed(let records, let refusals) = outcome else { return unavailable(outcome) }
        if refusals.isEmpty { return trackResponse(status: .ok, error: nil, verbose: verbose) }
        if strict {
            return failedRecords(refusals, imported: records - refusals.count)
        }
        let first = refusals[0]
        let message =
            "\(refusals.count) of \(records) profile updates refused; update \(first.index): \(Self.message(first))"
        return trackResponse(status: .ok, error: message, verbose: verbose)
    }

    /// Group profiles are not kept (only user profiles are, issue 9).
    private func groups() -> Response {
        Response.json(
            .notImplemented,
            #"{"code":501,"error":"group profile operations (/groups) are not implemented by this server; user profiles (/engage) and events (/track, /import) are","status":0}"#
        )
    }

    // MARK: Helpers

    private func unavailable(_ outcome: IngestOutcome) -> Response {
        switch outcome {
        case .full:
            var response = Response.json(
                .tooManyRequests,
                #"{"code":429,"error":"Project exceeded rate limits. Please retry the request with exponential backoff.","status":"Too Many Requests"}"#
            )
            response.headers[.retryAfter] = "1"
            return response
        case .closing:
            var response = Response.json(
                .serviceUnavailable,
                #"{"code":503,"error":"the server is shutting down; retry","status":"Service Unavailable"}"#)
            response.headers[.retryAfter] = "1"
            return response
        case .failed(let reason):
            return Response.json(
                .serviceUnavailable,
                "{\"code\":503,\"error\":\(JSON.string(reason)),\"status\":\"Service Unavailable\"}")
        case .committed:
            return Response.json(.internalServerError, #"{"code":500,"error":"unexpected","status":"Error"}"#)
        }
    }

    /// The fields of the query string and, for a form body, of the body (the body wins), and
    /// the body itself, inflated when it is gzip.
    private func formAndBody(_ request: Request) async throws -> ([String: String], [UInt8]) {
        let buffer = try await request.body.collect(upTo: maxBodyBytes)
        var body = Array(buffer.readableBytesView)
        let encoding = request.headers[.contentEncoding]?.lowercased() ?? ""
        if encoding.contains("gzip") || encoding.contains("deflate") || Payload.isGzip(body) {
            body = try Payload.gunzip(body)
        }
        var fields = Payload.formFields(Array((request.uri.query ?? "").utf8))
        let contentType = request.headers[.contentType]?.lowercased() ?? ""
        let looksLikeForm =
            contentType.hasPrefix("application/x-www-form-urlencoded")
            || (!contentType.contains("json") && body.starts(with: Array("data=".utf8)))
        if looksLikeForm {
            guard body.count <= Payload.maxDecodedBytes * 3 else {
                throw PayloadError.tooLarge("request exceeds max limit of \(Payload.maxDecodedBytes) bytes")
            }
            fields.merge(Payload.formFields(body)) { _, new in new }
            body = []
        }
        return (fields, body)
    }

    private func parameter(_ name: String, _ request: Request) -> String? {
        Payload.formFields(Array((request.uri.query ?? "").utf8))[name]
    }

    /// The secret of `Authorization: Basic`: the user name with an empty password (the
    /// project secret), else the password (service-account style).
    static func basicSecret(_ header: String?) -> String? {
        guard let header, header.count > 6, header.prefix(6).lowercased() == "basic " else { return nil }
        guard let data = Data(base64Encoded: header.dropFirst(6).trimmingCharacters(in: .whitespaces)),
            let text = String(data: data, encoding: .utf8)
        else { return nil }
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        let user = String(parts[0])
        let password = parts.count > 1 ? String(parts[1]) : ""
        let secret = password.isEmpty ? user : password
        return secret.isEmpty ? nil : secret
    }

    /// The one project token a request's records name (`/track`: `properties.token`;
    /// `/engage`: `$token`). A record that is not a JSON object is passed over here: the
    /// import refuses it on its own, with the exact reason, and stores the others.
    ///
    /// - Throws: ``PayloadError`` when no record is a JSON object, a JSON object names no
    ///   token, or two records name different ones.
    static func projectToken(
        _ payload: SplitPayload, what: String, name: String, _ token: ([String: Any]) -> Any?
    ) throws -> String {
        var tokens = Set<String>()
        for range in payload.records {
            guard let object = try? JSONSerialization.jsonObject(with: Data(payload.bytes[range])) as? [String: Any]
            else { continue }
            guard let value = token(object) as? String, !value.isEmpty else {
                throw PayloadError.malformed("every one of the \(what) needs \(name), the project's token")
            }
            tokens.insert(value)
        }
        if tokens.isEmpty {
            throw PayloadError.malformed(
                "malformed JSON: no \(what.dropLast()) of the request is a valid JSON object (UTF-8, no NaN)")
        }
        guard tokens.count == 1, let value = tokens.first else {
            throw PayloadError.malformed("the \(what) of one request must carry the same project token")
        }
        return value
    }

    static func message(_ refusal: Refusal) -> String {
        refusal.field == "(record)" ? refusal.reason : "'\(refusal.field)' is invalid: \(refusal.reason)"
    }

    static func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}

extension Response {
    static func json(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

/// JSON text for the few values the answers carry (the escaping of the reports' JSON).
enum JSON {
    static func string(_ value: String) -> String {
        var out = ""
        ReportJSON.writeString(value, to: &out)
        return out
    }
}
