// The `.narinfo` file of a Nix binary cache: `Key: value` lines describing one store path
// and the NAR that holds it. Parsing accepts what Nix 2.8's nar-info.cc accepts, a little
// more strictly (see NarinfoFormatError); formatting writes exactly what Nix writes.
import { Hash, HashFormatError } from './hash.ts'
import { NIX_STORE_DIR, StorePathError, parseBaseName, parseStorePath } from './store-path.ts'

export interface NarInfo {
  /** Full store path, `/nix/store/<hash>-<name>`. */
  storePath: string
  /** Where the (compressed) NAR is, relative to the cache root: `nar/<filehash>.nar.xz`. */
  url: string
  /** `xz`, `bzip2`, `zstd`, `none`, ...; a file without the field means `bzip2`. */
  compression: string
  /** Hash of the compressed file; Nix writes it whenever it writes a narinfo. */
  fileHash?: Hash
  fileSize?: number
  narHash: Hash
  narSize: number
  /** Base names (`<hash>-<name>`) of the paths this one refers to; may include itself. */
  references: string[]
  /** Base name of the `.drv` that built it; absent when unknown. */
  deriver?: string
  /** `keyname:base64signature`, one per `Sig` line. */
  sigs: string[]
  /** Content address, `fixed:r:sha256:<nix32>`, `text:sha256:<nix32>`, ... */
  ca?: string
}

/** Why a narinfo was refused; stable codes that callers and tests match on. */
export type NarinfoProblem =
  | 'missing-colon'
  | 'missing-newline'
  | 'missing-field'
  | 'duplicate-field'
  | 'bad-hash'
  | 'bad-size'
  | 'zero-nar-size'
  | 'bad-store-path'
  | 'bad-ca'
  | 'bad-sig'

export class NarinfoFormatError extends Error {
  override name = 'NarinfoFormatError'
  readonly problem: NarinfoProblem
  /** 1-based line of the fault; 0 when the fault is the file as a whole (a field missing). */
  readonly line: number
  constructor (problem: NarinfoProblem, line: number, detail: string, source?: string) {
    const where = `${source != null ? `${source}: ` : ''}${line > 0 ? `line ${line}: ` : ''}`
    super(`narinfo ${where}${detail}`)
    this.problem = problem
    this.line = line
  }
}

export interface ParseNarinfoOptions {
  /** Named in error messages (a file path, a URL). */
  source?: string
  storeDir?: string
}

/** The default when a narinfo has no Compression line (nar-info.cc). */
export const DEFAULT_COMPRESSION = 'bzip2'
/** What some writers put in `Deriver` when they don't know it; means none. */
export const UNKNOWN_DERIVER = 'unknown-deriver'

// Fields that may appear once; Sig may repeat. Nix ignores fields it does not know (old caches
// carry `System:`), and so do we.
const SINGLE_FIELDS = new Set(['StorePath', 'URL', 'Compression', 'FileHash', 'FileSize', 'NarHash', 'NarSize', 'References', 'Deriver', 'CA'])

const CA_PATTERN = /^(text:|fixed:(r:)?)([a-z0-9]+:.+)$/

/**
 * Parses narinfo text. Every line is `Key: value\n` (one space after the colon, a newline at
 * the end, even on the last line). Throws NarinfoFormatError naming the line and the problem.
 */
export function parseNarinfo (text: string, options: ParseNarinfoOptions = {}): NarInfo {
  const storeDir = options.storeDir ?? NIX_STORE_DIR
  const seen = new Set<string>()
  let storePath: string | undefined
  let url = ''
  let compression = ''
  let fileHash: Hash | undefined
  let fileSize: number | undefined
  let narHash: Hash | undefined
  let narSize: number | undefined
  let references: string[] = []
  let deriver: string | undefined
  const sigs: string[] = []
  let ca: string | undefined

  let pos = 0
  let line = 1
  const fail = (problem: NarinfoProblem, detail: string): never => {
    throw new NarinfoFormatError(problem, line, detail, options.source)
  }
  const hashField = (key: string, value: string): Hash => {
    try {
      // Nix accepts any prefixed form (nix32, base16, base64, SRI) and rewrites nix32.
      return Hash.parse(value)
    } catch (err) {
      if (!(err instanceof HashFormatError)) throw err
      return fail('bad-hash', `${key}: ${err.message}`)
    }
  }
  const sizeField = (key: string, value: string): number => {
    const n = Number(value)
    if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n)) fail('bad-size', `${key} '${value}' is not a whole number of bytes (digits only, below 2^53)`)
    return n
  }
  const baseNameField = (key: string, value: string): string => {
    try {
      return parseBaseName(value).baseName
    } catch (err) {
      if (!(err instanceof StorePathError)) throw err
      return fail('bad-store-path', `${key}: ${err.message}`)
    }
  }

  while (pos < text.length) {
    const eol = text.indexOf('\n', pos)
    if (eol < 0) fail('missing-newline', 'the last line does not end with a newline')
    const row = text.slice(pos, eol)
    const colon = row.indexOf(':')
    if (colon < 0) fail('missing-colon', `expected 'Key: value', found '${row.length > 80 ? row.slice(0, 80) + '…' : row}'`)
    const key = row.slice(0, colon)
    if (row[colon + 1] !== ' ' && colon + 1 < row.length) fail('missing-colon', `expected a space after '${key}:'`)
    // `References: ` with nothing after it is how Nix writes no references; accept `Key:` too.
    const value = row.slice(colon + 2)

    if (SINGLE_FIELDS.has(key)) {
      if (seen.has(key)) fail('duplicate-field', `${key} appears more than once`)
      seen.add(key)
    }
    switch (key) {
      case 'StorePath':
        try {
          parseStorePath(value, storeDir)
          storePath = value
        } catch (err) {
          if (!(err instanceof StorePathError)) throw err
          fail('bad-store-path', `StorePath: ${err.message}`)
        }
        break
      case 'URL': url = value; break
      case 'Compression': compression = value; break
      case 'FileHash': fileHash = hashField(key, value); break
      case 'FileSize': fileSize = sizeField(key, value); break
      case 'NarHash': narHash = hashField(key, value); break
      case 'NarSize':
        narSize = sizeField(key, value)
        if (narSize === 0) fail('zero-nar-size', 'NarSize is 0')
        break
      case 'References':
        references = value.split(' ').filter(r => r !== '').map(r => baseNameField(key, r))
        break
      case 'Deriver':
        deriver = value === UNKNOWN_DERIVER ? undefined : baseNameField(key, value)
        break
      case 'Sig':
        if (value === '') fail('bad-sig', 'Sig is empty')
        sigs.push(value)
        break
      case 'CA':
        if (!CA_PATTERN.test(value)) fail('bad-ca', `CA '${value}' is not 'text:<hash>' or 'fixed:[r:]<hash>'`)
        try {
          Hash.parse(value.replace(/^(text:|fixed:(r:)?)/, ''))
        } catch (err) {
          if (!(err instanceof HashFormatError)) throw err
          fail('bad-ca', `CA: ${err.message}`)
        }
        ca = value
        break
      default:
        break
    }
    pos = eol + 1
    line++
  }

  line = 0
  if (storePath === undefined) return fail('missing-field', 'StorePath is missing')
  if (narHash === undefined) return fail('missing-field', 'NarHash is missing')
  if (url === '') return fail('missing-field', 'URL is missing')
  if (narSize === undefined) return fail('missing-field', 'NarSize is missing')

  const info: NarInfo = {
    storePath,
    url,
    compression: compression === '' ? DEFAULT_COMPRESSION : compression,
    narHash,
    narSize,
    references,
    sigs
  }
  if (fileHash !== undefined) info.fileHash = fileHash
  if (fileSize !== undefined) info.fileSize = fileSize
  if (deriver !== undefined) info.deriver = deriver
  if (ca !== undefined) info.ca = ca
  return info
}

/** Sorted as C++ std::set<std::string> sorts (bytewise), without duplicates. */
export function sortedUnique (items: readonly string[]): string[] {
  return [...new Set(items)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
}

/**
 * The narinfo text, byte for byte as Nix 2.8 writes it (NarInfo::to_string): fixed field
 * order, hashes in nix32, references and signatures sorted and unique (Nix keeps them in
 * sets), `References: ` even when empty, no Deriver line when there is none.
 */
export function formatNarinfo (info: NarInfo): string {
  let out = ''
  out += `StorePath: ${info.storePath}\n`
  out += `URL: ${info.url}\n`
  out += `Compression: ${info.compression === '' ? DEFAULT_COMPRESSION : info.compression}\n`
  // Nix always has these (it asserts); a narinfo we assemble before compressing may not.
  if (info.fileHash !== undefined) out += `FileHash: ${info.fileHash.toNix32()}\n`
  if (info.fileSize !== undefined) out += `FileSize: ${info.fileSize}\n`
  out += `NarHash: ${info.narHash.toNix32()}\n`
  out += `NarSize: ${info.narSize}\n`
  out += `References: ${sortedUnique(info.references).join(' ')}\n`
  if (info.deriver !== undefined) out += `Deriver: ${info.deriver}\n`
  for (const sig of sortedUnique(info.sigs)) out += `Sig: ${sig}\n`
  if (info.ca !== undefined) out += `CA: ${info.ca}\n`
  return out
}
