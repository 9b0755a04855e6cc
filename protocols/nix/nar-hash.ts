// NarHash and NarSize (what narinfo files and `nix path-info` report), computed while a NAR
// streams past, without holding it.
import { createHash, type Hash as CryptoHash } from 'node:crypto'
import { Hash } from './hash.ts'
import { ChunkPool, encodeNar, type EncodeNarOptions } from './nar-encoder.ts'

export interface NarDigest {
  /** sha256 of the NAR; `narHash.toNix32()` is the `sha256:<nix32>` form Nix prints. */
  narHash: Hash
  narSize: number
}

/** Accumulates the sha256 and length of the chunks it is given. */
export class NarHasher {
  private readonly sha = createHash('sha256')
  private size = 0
  private done: NarDigest | undefined

  update (chunk: Uint8Array): void {
    if (this.done != null) throw new Error('NarHasher: update after digest')
    this.sha.update(chunk)
    this.size += chunk.length
  }

  get narSize (): number { return this.size }

  digest (): NarDigest {
    this.done ??= { narHash: new Hash('sha256', (this.sha as CryptoHash).digest()), narSize: this.size }
    return this.done
  }
}

/** Passes `source` through unchanged, feeding every chunk to `hasher` on the way. */
export async function * tapNarHash (source: AsyncIterable<Uint8Array>, hasher: NarHasher): AsyncGenerator<Uint8Array> {
  for await (const chunk of source) {
    hasher.update(chunk)
    yield chunk
  }
}

/** NarHash and NarSize of the tree at `path`, as `nix path-info` would report once it is added. */
export async function narDigestOfPath (path: string | Buffer, options: EncodeNarOptions = {}): Promise<NarDigest> {
  const hasher = new NarHasher()
  // Hashing copies nothing out of a chunk, so each can go straight back to the pool.
  const pool = options.pool ?? new ChunkPool(options.chunkSize)
  for await (const chunk of encodeNar(path, { ...options, pool })) {
    hasher.update(chunk)
    pool.release(chunk)
  }
  return hasher.digest()
}
