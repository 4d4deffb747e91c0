// gzip decompression through the system zlib (CZlib), used to read OpenCLIP's bpe_simple_vocab_16e6.txt.gz the
// way open_clip/tokenizer.py does with `gzip.open(bpe_path).read()`.
import CZlib
import Foundation

enum Gzip {
    static func decompress(_ input: Data) throws -> Data {
        guard !input.isEmpty else { throw TokenizerError.decompression("empty input") }
        var stream = z_stream()
        // 15 + 32: maximum window, automatic gzip/zlib header detection.
        var status = inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else { throw TokenizerError.decompression("inflateInit2 returned \(status)") }
        defer { inflateEnd(&stream) }
        var output = Data()
        let chunkSize = 1 << 20
        var chunk = [UInt8](repeating: 0, count: chunkSize)
        try input.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            guard let base = raw.bindMemory(to: Bytef.self).baseAddress else { return }
            stream.next_in = UnsafeMutablePointer(mutating: base)
            stream.avail_in = uInt(raw.count)
            repeat {
                let produced: Int = chunk.withUnsafeMutableBufferPointer { buf in
                    stream.next_out = buf.baseAddress
                    stream.avail_out = uInt(chunkSize)
                    status = inflate(&stream, Z_NO_FLUSH)
                    return chunkSize - Int(stream.avail_out)
                }
                guard status == Z_OK || status == Z_STREAM_END else {
                    throw TokenizerError.decompression("inflate returned \(status)")
                }
                output.append(contentsOf: chunk[0..<produced])
                if status == Z_OK && produced == 0 && stream.avail_in == 0 {
                    throw TokenizerError.decompression("truncated gzip stream")
                }
            } while status != Z_STREAM_END
        }
        return output
    }
}
