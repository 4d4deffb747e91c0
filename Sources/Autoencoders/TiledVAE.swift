// Matches diffusers AutoencoderKL tiling (models/autoencoders/autoencoder_kl.py _tiled_encode / tiled_decode,
// blend_v / blend_h): overlapping tiles stepped by tile * (1 - overlap), each blended linearly into the tile above
// and to the left over `blend_extent` rows/columns (in place, so later tiles blend with already-blended neighbours,
// as the reference does), then cropped to tile - blend_extent and concatenated.
import NeuralNetwork
import TensorCore

extension AutoencoderKL {
    /// diffusers tile_latent_min_size: int(sample_size / 2^(blocks - 1)).
    public var tileLatentMinSize: Int { max(tiling.tileSampleMinSize / downsamplingFactor, 1) }

    func shouldTileEncode(_ x: Tensor, _ mode: TileMode) -> Bool {
        let (h, w) = (x.shape[2], x.shape[3])
        let larger = h > tiling.tileSampleMinSize || w > tiling.tileSampleMinSize
        switch mode {
        case .never: return false
        case .always: return larger
        case .auto: return larger && h * w > tiling.autoTileArea
        }
    }

    func shouldTileDecode(_ z: Tensor, _ mode: TileMode) -> Bool {
        let (h, w) = (z.shape[2], z.shape[3])
        let larger = h > tileLatentMinSize || w > tileLatentMinSize
        let f = downsamplingFactor
        switch mode {
        case .never: return false
        case .always: return larger
        case .auto: return larger && h * w * f * f > tiling.autoTileArea
        }
    }

    /// Moments of x computed tile by tile.
    public func tiledEncodeMoments(_ x: Tensor) -> Tensor {
        let tile = tiling.tileSampleMinSize
        let overlap = max(Int(Float(tile) * (1 - tiling.tileOverlapFactor)), 1)
        let blend = Int(Float(tileLatentMinSize) * tiling.tileOverlapFactor)
        return GradMode.noGrad {
            tiled(x, tile: tile, step: overlap, blend: blend, rowLimit: tileLatentMinSize - blend) { encodeMoments($0) }
        }
    }

    /// Image for latents z decoded tile by tile.
    public func tiledDecode(_ z: Tensor) -> Tensor {
        let tile = tileLatentMinSize
        let overlap = max(Int(Float(tile) * (1 - tiling.tileOverlapFactor)), 1)
        let blend = Int(Float(tiling.tileSampleMinSize) * tiling.tileOverlapFactor)
        return GradMode.noGrad {
            tiled(z, tile: tile, step: overlap, blend: blend, rowLimit: tiling.tileSampleMinSize - blend) { decodeWhole($0) }
        }
    }

    private func tiled(_ x: Tensor, tile: Int, step: Int, blend: Int, rowLimit: Int, _ f: (Tensor) -> Tensor) -> Tensor {
        let (h, w) = (x.shape[2], x.shape[3])
        var rows: [[Tensor]] = []
        for i in stride(from: 0, to: h, by: step) {
            rows.append(stride(from: 0, to: w, by: step).map { j in
                f(x.narrow(2, i, min(tile, h - i)).narrow(3, j, min(tile, w - j)).contiguous()).contiguous()
            })
        }
        var resultRows: [Tensor] = []
        for i in rows.indices {
            var row: [Tensor] = []
            for j in rows[i].indices {
                let t = rows[i][j]
                if i > 0 { blendV(rows[i - 1][j], t, blend) }
                if j > 0 { blendH(rows[i][j - 1], t, blend) }
                row.append(t.narrow(2, 0, min(rowLimit, t.shape[2])).narrow(3, 0, min(rowLimit, t.shape[3])))
            }
            resultRows.append(concat(row, axis: 3))
        }
        return concat(resultRows, axis: 2)
    }
}

/// b[:, :, y, :] = a[:, :, -e + y, :] * (1 - y / e) + b[:, :, y, :] * (y / e) for y < e, in place on contiguous b.
func blendV(_ a: Tensor, _ b: Tensor, _ extent: Int) {
    let e = min(a.shape[2], b.shape[2], extent)
    guard e > 0 else { return }
    let (planes, ah, bh, w) = (b.shape[0] * b.shape[1], a.shape[2], b.shape[2], b.shape[3])
    precondition(a.shape[3] == w && a.isContiguous && b.isContiguous, "blend_v: tiles \(a.shape) and \(b.shape) do not line up")
    let ap = a.data, bp = b.data
    for p in 0..<planes {
        for y in 0..<e {
            let t = Float(Double(y) / Double(e)), s = Float(1 - Double(y) / Double(e))
            let src = ap + (p * ah + ah - e + y) * w, dst = bp + (p * bh + y) * w
            for x in 0..<w { dst[x] = src[x] * s + dst[x] * t }
        }
    }
    withExtendedLifetime((a, b)) {}
}

/// b[:, :, :, x] = a[:, :, :, -e + x] * (1 - x / e) + b[:, :, :, x] * (x / e) for x < e, in place on contiguous b.
func blendH(_ a: Tensor, _ b: Tensor, _ extent: Int) {
    let e = min(a.shape[3], b.shape[3], extent)
    guard e > 0 else { return }
    let (planes, h, aw, bw) = (b.shape[0] * b.shape[1], b.shape[2], a.shape[3], b.shape[3])
    precondition(a.shape[2] == h && a.isContiguous && b.isContiguous, "blend_h: tiles \(a.shape) and \(b.shape) do not line up")
    let ap = a.data, bp = b.data
    for p in 0..<planes {
        for y in 0..<h {
            let src = ap + (p * h + y) * aw + aw - e, dst = bp + (p * h + y) * bw
            for x in 0..<e {
                let t = Float(Double(x) / Double(e)), s = Float(1 - Double(x) / Double(e))
                dst[x] = src[x] * s + dst[x] * t
            }
        }
    }
    withExtendedLifetime((a, b)) {}
}
