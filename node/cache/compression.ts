// How the shared cache compresses NAR files: methods that Nix 2.8 can decompress and that Node
// compresses without native addons. Why zstd is the default, with the figures measured here:
// docs/decisions.md, "Compression".
import type { Transform } from 'node:stream'
import { PassThrough } from 'node:stream'
import { constants, createBrotliCompress, createBrotliDecompress, createZstdCompress, createZstdDecompress } from 'node:zlib'

/** Names as a narinfo's `Compression` line carries them. */
export type CompressionName = 'zstd' | 'br' | 'none'

export const COMPRESSION_NAMES: readonly CompressionName[] = ['zstd', 'br', 'none']

/** zstd -3: 2.5x the speed of level 6 for 6 % more bytes (measured, see docs/decisions.md). */
export const DEFAULT_COMPRESSION: CompressionName = 'zstd'
export const DEFAULT_ZSTD_LEVEL = 3
/** Brotli quality 4: above it compression slows fast (q6 30 MiB/s, q9 6 MiB/s) for little gain. */
export const DEFAULT_BROTLI_QUALITY = 4

/** File name suffixes after `.nar`, as Nix's BinaryCacheStore names them. */
export const NAR_EXTENSIONS: Record<CompressionName, string> = { zstd: '.zst', br: '.br', none: '' }

export class UnknownCompression extends Error {
  override name = 'UnknownCompression'
  readonly compression: string
  constructor (compression: string) {
    super(`unknown compression '${compression}'; expected one of ${COMPRESSION_NAMES.join(', ')}`)
    this.compression = compression
  }
}

export function isCompressionName (text: string): text is CompressionName {
  return (COMPRESSION_NAMES as readonly string[]).includes(text)
}

export function parseCompression (text: string): CompressionName {
  if (!isCompressionName(text)) throw new UnknownCompression(text)
  return text
}

export interface CompressOptions {
  /** zstd level (1–19) or Brotli quality (0–11); the method's default when absent. */
  level?: number
  /** The input size when known: Brotli tunes its window to it. */
  sizeHint?: number
}

/** A transform that compresses with `name`; `none` passes bytes through. */
export function compressor (name: CompressionName, options: CompressOptions = {}): Transform {
  switch (name) {
    case 'zstd':
      // 1 MiB output chunks: Node's default 16 KiB halved the rate on incompressible NARs.
      return createZstdCompress({ chunkSize: 1024 * 1024, params: { [constants.ZSTD_c_compressionLevel]: options.level ?? DEFAULT_ZSTD_LEVEL } })
    case 'br':
      return createBrotliCompress({
        params: {
          [constants.BROTLI_PARAM_QUALITY]: options.level ?? DEFAULT_BROTLI_QUALITY,
          ...(options.sizeHint !== undefined ? { [constants.BROTLI_PARAM_SIZE_HINT]: options.sizeHint } : {})
        }
      })
    case 'none':
      return new PassThrough()
  }
}

/** The inverse of `compressor`: for a node that reads NAR files from the cache directly. */
export function decompressor (name: CompressionName): Transform {
  switch (name) {
    case 'zstd': return createZstdDecompress()
    case 'br': return createBrotliDecompress()
    case 'none': return new PassThrough()
  }
}
