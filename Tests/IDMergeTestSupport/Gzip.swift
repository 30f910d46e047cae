import CZlib
import Foundation

/// Gzip-compresses bytes, for tests of gzip input.
public func gzip(_ input: [UInt8]) throws -> [UInt8] {
    var stream = z_stream()
    guard czlib_deflate_init_gzip(&stream, 6) == Z_OK else { throw GzipTestError() }
    defer { deflateEnd(&stream) }
    var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(input.count))) + 64)
    var source = input
    let status = source.withUnsafeMutableBufferPointer { inPointer in
        output.withUnsafeMutableBufferPointer { outPointer in
            stream.next_in = inPointer.baseAddress
            stream.avail_in = UInt32(inPointer.count)
            stream.next_out = outPointer.baseAddress
            stream.avail_out = UInt32(outPointer.count)
            return deflate(&stream, Z_FINISH)
        }
    }
    guard status == Z_STREAM_END else { throw GzipTestError() }
    return Array(output.prefix(Int(stream.total_out)))
}

public struct GzipTestError: Error {}
