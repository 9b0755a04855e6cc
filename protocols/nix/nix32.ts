// Nix's base-32: its own alphabet (no e, o, u, t) and its own bit order, least significant
// bits of the last byte first. Used for store path hashes and printed NAR hashes.

const ALPHABET = '0123456789abcdfghijklmnpqrsvwxyz'
const VALUE = new Map<string, number>([...ALPHABET].map((c, i) => [c, i]))

/** Length of the nix32 text for `bytes` bytes. */
export function nix32Length (bytes: number): number {
  return Math.ceil((bytes * 8) / 5)
}

export function encodeNix32 (bytes: Uint8Array): string {
  const len = nix32Length(bytes.length)
  let out = ''
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5
    const i = Math.floor(b / 8)
    const j = b % 8
    const lo = (bytes[i] ?? 0) >> j
    const hi = i + 1 < bytes.length ? (bytes[i + 1] ?? 0) << (8 - j) : 0
    out += ALPHABET[(lo | hi) & 0x1f]
  }
  return out
}

export class Nix32Error extends Error {
  override name = 'Nix32Error'
}

/** Decodes nix32 text of a hash of `size` bytes. */
export function decodeNix32 (text: string, size: number): Uint8Array {
  if (text.length !== nix32Length(size)) {
    throw new Nix32Error(`nix32 text has ${text.length} characters, expected ${nix32Length(size)} for ${size} bytes`)
  }
  const out = new Uint8Array(size)
  for (let n = 0; n < text.length; n++) {
    const ch = text[text.length - 1 - n] ?? ''
    const digit = VALUE.get(ch)
    if (digit === undefined) throw new Nix32Error(`invalid nix32 character '${ch}' at offset ${text.length - 1 - n}`)
    const b = n * 5
    const i = Math.floor(b / 8)
    const j = b % 8
    out[i] = (out[i] ?? 0) | ((digit << j) & 0xff)
    const carry = digit >> (8 - j)
    if (i + 1 < size) {
      out[i + 1] = (out[i + 1] ?? 0) | carry
    } else if (carry !== 0) {
      throw new Nix32Error(`nix32 text '${text}' does not fit in ${size} bytes`)
    }
  }
  return out
}
