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

