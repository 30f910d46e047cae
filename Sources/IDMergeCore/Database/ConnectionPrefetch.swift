import Foundation
import PGClient

/// Connections opened ahead of need, each on a thread of its own from the moment this is
/// made, so that their start-up (a server process each, about 10 ms) overlaps the caller's
/// own work instead of delaying the step that needs them (the nightly job's refresh:
/// BENCHMARKS.md, "Nightly job, session 8").
///
/// ``take()`` hands them out in turn, waiting for one still opening and passing over those
/// that could not be opened; once none is left it opens a new one. ``closeUntaken()``
/// closes those never taken. Thread-safe.
public final class ConnectionPrefetch: @unchecked Sendable {
    private final class Opening: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        // Written by the thread before it signals `done`, read only after the wait.
        var result: Result<Connection, any Error>?
    }

    private let open: @Sendable () throws -> Connection
    private let gate = NSLock()
    // Under `gate`.
    private var pending: [Opening]

    /// Starts opening `count` connections with `open`, each on a thread of its own.
    public init(count: Int, open: @escaping @Sendable () throws -> Connection) {
        self.open = open
        pending = (0..<max(0, count)).map { _ in Opening() }
        for opening in pending {
            let thread = Thread {
                opening.result = Result { try open() }
                opening.done.signal()
            }
            thread.name = "idmerge.connection-prefetch"
            thread.start()
        }
    }

    /// The next connection opened ahead (waiting for it; those whose opening failed are
    /// passed over), or a new one when none is left. The caller owns it and closes it.
    ///
    /// - Throws: when none of those left could be opened, what `open` threw for the last of
    ///   them; when none was left, what `open` throws.
    public func take() throws -> Connection {
        var failure: (any Error)?
        while true {
            gate.lock()
            let next = pending.isEmpty ? nil : pending.removeFirst()
            gate.unlock()
            guard let next else {
                if let failure { throw failure }
                return try open()
            }
            next.done.wait()
            switch next.result! {
            case .success(let connection): return connection
            case .failure(let error): failure = error
            }
        }
    }

    /// Closes the connections never taken, once they have opened (errors are dropped: they were
    /// never needed).
    public func closeUntaken() {
        gate.lock()
        let left = pending
        pending = []
        gate.unlock()
        for opening in left {
            opening.done.wait()
            if case .success(let connection) = opening.result { connection.close() }
        }
    }
}
