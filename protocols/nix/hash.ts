// Hashes as Nix prints and parses them: `sha256:<nix32>` (what narinfo files and
// `nix-store --query --hash` print), `sha256:<base16>`, `sha256-<base64>` (SRI), and bare
// forms given the algorithm.
import { createHash } from 'node:crypto'
import { decodeNix32, encodeNix32, nix32Length } from './nix32.ts'

export type HashAlgorithm = 'md5' | 'sha1' | 'sha256' | 'sha512'

const SIZES: Record<HashAlgorithm, number> = { md5: 16, sha1: 20, sha256: 32, sha512: 64 }

export class HashFormatError extends Error {
  override name = 'HashFormatError'
}

export class Hash {
  readonly algorithm: HashAlgorithm
  readonly digest: Uint8Array

  constructor (algorithm: HashAlgorithm, digest: Uint8Array) {
    if (digest.length !== SIZES[algorithm]) {
      throw new HashFormatError(`a ${algorithm} digest has ${SIZES[algorithm]} bytes, not ${digest.length}`)
    }
    this.algorithm = algorithm
    this.digest = digest
  }

  /** `sha256:<nix32>`, the form narinfo files carry. */
  toNix32 (): string { return `${this.algorithm}:${encodeNix32(this.digest)}` }
  toBase16 (): string { return `${this.algorithm}:${Buffer.from(this.digest).toString('hex')}` }
  /** `sha256-<base64>`, the SRI form newer Nix prints in JSON. */
  toSri (): string { return `${this.algorithm}-${Buffer.from(this.digest).toString('base64')}` }
  toString (): string { return this.toNix32() }
  equals (other: Hash): boolean {
    return this.algorithm === other.algorithm && Buffer.from(this.digest).equals(Buffer.from(other.digest))
  }

  /**
   * Parses `algo:<nix32|base16|base64>` or SRI `algo-<base64>`; with `algorithm` given, also a
   * bare digest text. Throws HashFormatError naming what is wrong.
   */
  static parse (text: string, algorithm?: HashAlgorithm): Hash {
    let algo: string | undefined = algorithm
    let rest = text
    const sri = /^(md5|sha1|sha256|sha512)-(.+)$/.exec(text)
    const colon = text.indexOf(':')
    if (sri != null) {
      const a = sri[1] as HashAlgorithm
      const digest = Buffer.from(sri[2] ?? '', 'base64')
      if (digest.length !== SIZES[a] || digest.toString('base64') !== sri[2]) {
        throw new HashFormatError(`invalid SRI hash '${text}'`)
      }
      return new Hash(a, digest)
    }
    if (colon >= 0) {
      algo = text.slice(0, colon)
      rest = text.slice(colon + 1)
    }
    if (algo === undefined) throw new HashFormatError(`hash '${text}' does not say its algorithm`)
    if (!(algo in SIZES)) throw new HashFormatError(`unknown hash algorithm '${algo}' in '${text}'`)
    const a = algo as HashAlgorithm
    const size = SIZES[a]
    if (rest.length === size * 2 && /^[0-9a-f]+$/.test(rest)) return new Hash(a, Buffer.from(rest, 'hex'))
    if (rest.length === nix32Length(size)) {
      try {
        return new Hash(a, decodeNix32(rest, size))
      } catch (err) {
        throw new HashFormatError(`invalid ${a} hash '${text}': ${(err as Error).message}`)
      }
    }
    const b64 = Buffer.from(rest, 'base64')
    if (b64.length === size && b64.toString('base64') === rest) return new Hash(a, b64)
    throw new HashFormatError(`invalid ${a} hash '${text}': not nix32, base16 or base64 of ${size} bytes`)
  }

  static of (algorithm: HashAlgorithm, data: Uint8Array | string): Hash {
    return new Hash(algorithm, createHash(algorithm).update(data).digest())
  }
}
