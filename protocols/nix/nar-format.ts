// The NAR (Nix ARchive) format: the tokens, limits and errors shared by the encoder, the
// decoder and the restorer. A NAR is a sequence of strings, each a little-endian u64 length,
// the bytes, and zero padding to a multiple of 8:
//
//   nar       = "nix-archive-1" node
//   node      = "(" "type" ( regular | symlink | directory ) ")"
//   regular   = "regular" [ "executable" "" ] "contents" <bytes>
//   symlink   = "symlink" "target" <target>
//   directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//
// Directory entries come in strictly increasing byte order of their names (Nix writes them from
// a std::map<std::string>, i.e. memcmp order), so a tree has exactly one NAR.

export const NAR_MAGIC = 'nix-archive-1'

/** Longest keyword the grammar has ("nix-archive-1", "executable"); a longer token is garbage. */
export const MAX_TOKEN_LENGTH = 16
/** Longest file name a NAR entry may carry (Linux NAME_MAX). */
export const MAX_NAME_LENGTH = 255
/** Longest symlink target (Linux PATH_MAX less the NUL). */
export const MAX_TARGET_LENGTH = 4095
/** Contents lengths beyond this cannot be counted exactly in a JS number. */
export const MAX_CONTENTS_LENGTH = Number.MAX_SAFE_INTEGER

/** The input is not a well-formed NAR; `offset` is the byte where the problem was found. */
export class NarFormatError extends Error {
  override name = 'NarFormatError'
  readonly offset: number
  constructor (message: string, offset: number) {
    super(`${message} at byte ${offset}`)
    this.offset = offset
  }
}

/** A file on disk that a NAR cannot hold (socket, FIFO, device). */
export class NarUnsupportedFileError extends Error {
  override name = 'NarUnsupportedFileError'
  readonly path: string
  constructor (path: string, kind: string) {
    super(`file '${path}' has an unsupported type (${kind}); a NAR holds only regular files, symlinks and directories`)
    this.path = path
  }
}

/** A file changed size while it was being archived. */
export class NarFileChangedError extends Error {
  override name = 'NarFileChangedError'
  readonly path: string
  constructor (path: string, expected: number, got: number) {
    super(`file '${path}' changed while being archived: expected ${expected} bytes, read ${got}`)
    this.path = path
  }
}

/** Bytes of zero padding after a string of `length` bytes. */
export function padding (length: number): number {
  return (8 - (length % 8)) % 8
}

/** A name or target for messages: UTF-8 where valid, with other bytes escaped as \xNN. */
export function showBytes (bytes: Uint8Array): string {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8')
  if (!text.includes('\uFFFD')) return JSON.stringify(text)
  let out = ''
  for (const b of bytes) out += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`
  return `"${out}"`
}
