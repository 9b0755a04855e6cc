// The stream `nix-store --import` reads (Nix 2.8 src/libstore/export-import.cc):
//
//   for each path:  u64 1 · NAR · u64 0x4558494e ("NIXE") · string path
//                   · u64 n · n × string reference · string deriver ("" if none) · u64 0
//   then:           u64 0
//
// Integers are little-endian u64; a string is its u64 length, its bytes, and zero bytes up
// to a multiple of 8. The final u64 0 of each path says "no legacy signature follows".
// Nix reads the whole NAR, then the trailer, and registers the path only after the trailer,
// so a writer that stops before the trailer leaves the store untouched.

export const EXPORT_MAGIC = 0x4558494e

export function u64 (n: number): Uint8Array {
  const b = new Uint8Array(8)
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true)
  return b
}

export function exportString (s: string): Uint8Array {
  const bytes = new TextEncoder().encode(s)
  const padded = Math.ceil(bytes.length / 8) * 8
  const out = new Uint8Array(8 + padded)
  out.set(u64(bytes.length), 0)
  out.set(bytes, 8)
  return out
}

/** What precedes one path's NAR. */
export function exportHeader (): Uint8Array {
  return u64(1)
}

/** What follows one path's NAR: its registration. */
export function exportTrailer (info: { path: string, references: string[], deriver?: string }): Uint8Array {
  return Buffer.concat([
    u64(EXPORT_MAGIC),
    exportString(info.path),
    u64(info.references.length),
    ...info.references.map(exportString),
    exportString(info.deriver ?? ''),
    u64(0)
  ])
}

/** The end of the whole stream: no more paths. */
export function exportEnd (): Uint8Array {
  return u64(0)
}

/** Bytes that are not a NAR where one was expected; `offset` counts from the NAR's start. */
export class NarFormatError extends Error {
  override name = 'NarFormatError'
  readonly offset: number
  constructor (message: string, offset: number) {
    super(`${message} at byte ${offset} of the NAR`)
    this.offset = offset
  }
}

// Keyword-position strings after which the next string is free data (file contents,
// symlink target, entry name) that must not be read as structure.
const DATA_FOLLOWS = new Set(['contents', 'target', 'name'])
const MAX_KEYWORD = 64

/**
 * Follows a NAR's framing, without keeping its contents, to find where it ends. Nix reads
 * the bytes after a NAR's closing ")" as the registration trailer, so a sender whose "NAR"
 * runs on past its end could otherwise register a path of its choosing: feed() reports how
 * many bytes of each chunk still belong to the NAR, and the caller refuses the rest.
 */
export class NarEndTracker {
  /** Bytes consumed so far. */
  private pos = 0
  private phase: 'len' | 'body' | 'pad' = 'len'
  private readonly lenBytes = new Uint8Array(8)
  private lenFill = 0
  private remaining = 0
  private padRemaining = 0
  private keyword: number[] | null = []
  private dataNext = false
  private tokens = 0
  private depth = 0
  private ended = false

  get done (): boolean { return this.ended }

  /** Consumes `chunk`; returns how many of its bytes are NAR (fewer than its length once the NAR ends). */
  feed (chunk: Uint8Array): number {
    let i = 0
    while (i < chunk.length && !this.ended) {
      if (this.phase === 'len') {
        const take = Math.min(8 - this.lenFill, chunk.length - i)
        this.lenBytes.set(chunk.subarray(i, i + take), this.lenFill)
        this.lenFill += take
        i += take
        this.pos += take
        if (this.lenFill < 8) continue
        const len = new DataView(this.lenBytes.buffer).getBigUint64(0, true)
        if (len > BigInt(Number.MAX_SAFE_INTEGER)) throw new NarFormatError(`string length ${len} is too large`, this.pos - 8)
        this.lenFill = 0
        this.remaining = Number(len)
        this.padRemaining = (8 - (this.remaining % 8)) % 8
        this.keyword = !this.dataNext && this.remaining <= MAX_KEYWORD ? [] : null
        this.phase = 'body'
      } else if (this.phase === 'body') {
        const take = Math.min(this.remaining, chunk.length - i)
        if (this.keyword != null) for (let k = 0; k < take; k++) this.keyword.push(chunk[i + k] ?? 0)
        this.remaining -= take
        i += take
        this.pos += take
      } else {
        const take = Math.min(this.padRemaining, chunk.length - i)
        this.padRemaining -= take
        i += take
        this.pos += take
      }
      if (this.phase === 'body' && this.remaining === 0) this.phase = 'pad'
      if (this.phase === 'pad' && this.padRemaining === 0) this.endString()
    }
    return i
  }

  private endString (): void {
    this.phase = 'len'
    const wasData = this.dataNext
    this.dataNext = false
    this.tokens++
    if (wasData) return
    const token = this.keyword == null ? null : String.fromCharCode(...this.keyword)
    if (this.tokens === 1) {
      if (token !== 'nix-archive-1') throw new NarFormatError('missing the nix-archive-1 magic', 0)
    } else if (this.tokens === 2) {
      if (token !== '(') throw new NarFormatError('expected "(" after the magic', this.pos)
      this.depth = 1
    } else if (token === '(') {
      this.depth++
    } else if (token === ')') {
      this.depth--
      if (this.depth === 0) this.ended = true
    } else if (token != null && DATA_FOLLOWS.has(token)) {
      this.dataNext = true
    }
  }
}
