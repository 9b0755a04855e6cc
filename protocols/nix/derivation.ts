// Nix store derivations (`.drv` files): the ATerm text `Derive([outputs],[inputDrvs],[inputSrcs],
// system,builder,[args],[env])`, parsed and written back byte for byte as Nix 2.8 writes it
// (src/libstore/derivations.cc, `parseDerivation` and `Derivation::unparse`), and the JSON that
// `nix show-derivation` prints for it.
//
// Strings are bytes to Nix. We decode them as UTF-8, and keep any byte that is not part of valid
// UTF-8 as a lone surrogate U+DC80..U+DCFF (Python's "surrogateescape"), so that a .drv holding
// arbitrary bytes still parses and serialises back to exactly the same bytes.
import { readFile } from 'node:fs/promises'
import { isUtf8 } from 'node:buffer'
import { Hash, HashFormatError, type HashAlgorithm } from './hash.ts'

/** One output as the .drv spells it: all three fields are "" where Nix leaves them empty. */
export interface DerivationOutput {
  /** The output's store path; "" for floating content-addressed, deferred and impure outputs. */
  path: string
  /** `sha256`, `r:sha256` (recursive, i.e. NAR), …; "" for input-addressed outputs. */
  hashAlgo: string
  /** Base-16 digest of a fixed output, `impure`, or "". */
  hash: string
}

export interface Derivation {
  /** Output name -> output, in Nix's order (byte order of the names). */
  outputs: Map<string, DerivationOutput>
  /** Input .drv path -> the names of the outputs used from it. */
  inputDrvs: Map<string, string[]>
  /** Store paths (sources, not outputs of derivations) the build reads. */
  inputSrcs: string[]
  system: string
  builder: string
  args: string[]
  env: Map<string, string>
}

/** How Nix 2.8 reads an output (`DerivationOutput::raw()` variants). */
export type OutputKind = 'inputAddressed' | 'fixed' | 'floating' | 'deferred' | 'impure'

/** Malformed .drv text: where (byte offset, line, column) and what was expected there. */
export class DerivationFormatError extends Error {
  override name = 'DerivationFormatError'
  /** Byte offset into the input where parsing stopped. */
  readonly offset: number
  /** 1-based line and byte column of `offset`. */
  readonly line: number
  readonly column: number
  readonly expected: string
  /** The file parsed, when known. */
  readonly path: string | undefined
  constructor (input: Uint8Array, offset: number, expected: string, path?: string) {
    let line = 1
    let lineStart = 0
    for (let i = 0; i < offset && i < input.length; i++) {
      if (input[i] === 0x0a) { line++; lineStart = i + 1 }
    }
    const column = offset - lineStart + 1
    const found = offset >= input.length ? 'end of input' : describeByte(input[offset] ?? 0)
    super(`${path != null ? `${path}: ` : ''}malformed derivation at byte ${offset} (line ${line}, column ${column}): expected ${expected}, found ${found}`)
    this.offset = offset
    this.line = line
    this.column = column
    this.expected = expected
    this.path = path
  }
}

function describeByte (b: number): string {
  if (b >= 0x20 && b < 0x7f) return `'${String.fromCharCode(b)}'`
  return `byte 0x${b.toString(16).padStart(2, '0')}`
}

const QUOTE = 0x22
const BACKSLASH = 0x5c
const COMMA = 0x2c
const CLOSE_BRACKET = 0x5d

const HASH_ALGO = /^(r:|text:)?(md5|sha1|sha256|sha512)$/

/**
 * Parses .drv bytes (or text). Throws DerivationFormatError for anything Nix would not read back,
 * and also for what Nix's lenient reader lets through: missing commas between list items,
 * leading commas, and bytes after the closing parenthesis.
 */
export function parseDerivation (input: Uint8Array | string, path?: string): Derivation {
  const bytes = typeof input === 'string' ? encodeString(input) : input
  return new Parser(bytes, path).derivation()
}

class Parser {
  readonly b: Uint8Array
  readonly path: string | undefined
  pos = 0

  constructor (b: Uint8Array, path: string | undefined) {
    this.b = b
    this.path = path
  }

  fail (expected: string, at: number = this.pos): never {
    throw new DerivationFormatError(this.b, at, expected, this.path)
  }

  /** Consumes the ASCII text `lit`, failing at the first byte that differs. */
  expect (lit: string): void {
    for (let i = 0; i < lit.length; i++) {
      if (this.b[this.pos] !== lit.charCodeAt(i)) this.fail(`'${lit}'`)
      this.pos++
    }
  }

  /** Reads `[item,item,...]`, calling `item` for each. */
  list (item: () => void): void {
    this.expect('[')
    if (this.b[this.pos] === CLOSE_BRACKET) { this.pos++; return }
    for (;;) {
      item()
      const c = this.b[this.pos]
      if (c === CLOSE_BRACKET) { this.pos++; return }
      if (c !== COMMA) this.fail("',' or ']'")
      this.pos++
    }
  }

  /** A quoted string with Nix's escapes: \n \r \t, and `\x` is x for any other byte x. */
  string (): string {
    const start = this.pos
    if (this.b[this.pos] !== QUOTE) this.fail("'\"' starting a string")
    this.pos++
    const from = this.pos
    const b = this.b
    let escaped = false
    for (;;) {
      const c = b[this.pos]
      if (c === undefined) this.fail(`'"' closing the string that starts at byte ${start}`)
      if (c === QUOTE) break
      if (c === BACKSLASH) {
        escaped = true
        if (this.pos + 1 >= b.length) this.fail("a character after '\\'", this.pos + 1)
        this.pos += 2
      } else {
        this.pos++
      }
    }
    const to = this.pos
    this.pos++ // the closing quote
    if (!escaped) return decodeBytes(b.subarray(from, to))
    const out = new Uint8Array(to - from)
    let n = 0
    for (let i = from; i < to; i++) {
      let c = b[i] ?? 0
      if (c === BACKSLASH) {
        i++
        c = b[i] ?? 0
        if (c === 0x6e) c = 0x0a // n
        else if (c === 0x72) c = 0x0d // r
        else if (c === 0x74) c = 0x09 // t
      }
      out[n++] = c
    }
    return decodeBytes(out.subarray(0, n))
  }

  /** A string that Nix reads as a path: it must be absolute. */
  pathString (): string {
    const at = this.pos
    const s = this.string()
    if (!s.startsWith('/')) this.fail('an absolute path', at)
    return s
  }

  output (outputs: Map<string, DerivationOutput>): void {
    this.expect('(')
    const name = this.string()
    this.expect(',')
    const pathAt = this.pos
    const path = this.string()
    this.expect(',')
    const algoAt = this.pos
    const hashAlgo = this.string()
    this.expect(',')
    const hashAt = this.pos
    const hash = this.string()
    this.expect(')')
    if (hashAlgo !== '') {
      const m = HASH_ALGO.exec(hashAlgo)
      if (m == null) this.fail("a hash algorithm such as 'sha256' or 'r:sha256'", algoAt)
      if (hash === 'impure' || hash === '') {
        if (path !== '') this.fail('an empty path for a floating or impure output', pathAt)
      } else {
        if (!path.startsWith('/')) this.fail('an absolute path', pathAt)
        try {
          Hash.parse(hash, m[2] as HashAlgorithm)
        } catch (err) {
          if (!(err instanceof HashFormatError)) throw err
          this.fail(`a ${m[2] ?? ''} hash`, hashAt)
        }
      }
    } else {
      if (hash !== '') this.fail('an empty hash for an output without a hash algorithm', hashAt)
      if (path !== '' && !path.startsWith('/')) this.fail('an absolute path', pathAt)
    }
    // Nix's std::map::emplace keeps the first of two outputs with one name.
    if (!outputs.has(name)) outputs.set(name, { path, hashAlgo, hash })
  }

  derivation (): Derivation {
    this.expect('Derive(')
    const outputs = new Map<string, DerivationOutput>()
    this.list(() => { this.output(outputs) })
    this.expect(',')
    const inputDrvs = new Map<string, string[]>()
    this.list(() => {
      this.expect('(')
      const drvPath = this.pathString()
      this.expect(',')
      const names: string[] = []
      this.list(() => { names.push(this.string()) })
      this.expect(')')
      inputDrvs.set(drvPath, sortedUnique(names))
    })
    this.expect(',')
    const inputSrcs: string[] = []
    this.list(() => { inputSrcs.push(this.pathString()) })
    this.expect(',')
    const system = this.string()
    this.expect(',')
    const builder = this.string()
    this.expect(',')
    const args: string[] = []
    this.list(() => { args.push(this.string()) })
    this.expect(',')
    const env = new Map<string, string>()
    this.list(() => {
      this.expect('(')
      const name = this.string()
      this.expect(',')
      const value = this.string()
      this.expect(')')
      env.set(name, value)
    })
    this.expect(')')
    if (this.pos !== this.b.length) this.fail('end of input after the closing \')\'')
    // Nix keeps these in ordered containers; a file Nix wrote is already in this order.
    return {
      outputs: sortedMap(outputs),
      inputDrvs: sortedMap(inputDrvs),
      inputSrcs: sortedUnique(inputSrcs),
      system,
      builder,
      args,
      env: sortedMap(env)
    }
  }
}

/**
 * The .drv bytes Nix writes for `drv` (`Derivation::unparse`): maps and sets in byte order of
 * their keys; output fields, input paths, output names and the system unescaped, as Nix prints
 * them; builder, args and env escaped. For a parsed real .drv this is the file, byte for byte.
 */
export function serialiseDerivation (drv: Derivation): Buffer {
  let s = 'Derive(['
  s += sortedEntries(drv.outputs)
    .map(([name, o]) => `(${raw(name)},${raw(o.path)},${raw(o.hashAlgo)},${raw(o.hash)})`)
    .join(',')
  s += '],['
  s += sortedEntries(drv.inputDrvs)
    .map(([p, names]) => `(${raw(p)},[${sortedUnique(names).map(raw).join(',')}])`)
    .join(',')
  s += '],['
  s += sortedUnique(drv.inputSrcs).map(raw).join(',')
  s += `],${raw(drv.system)},${quote(drv.builder)},[`
  s += drv.args.map(quote).join(',')
  s += '],['
  s += sortedEntries(drv.env).map(([k, v]) => `(${quote(k)},${quote(v)})`).join(',')
  s += '])'
  return encodeString(s)
}

/** Nix's printUnquotedString: quotes around the bytes, nothing escaped. */
function raw (s: string): string {
  return `"${s}"`
}

const ESCAPES: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/** Nix's printString. */
function quote (s: string): string {
  return `"${s.replace(/["\\\n\r\t]/g, c => ESCAPES[c] ?? c)}"`
}

/** Reads and parses a .drv file; format errors name the file. */
export async function readDerivation (path: string, options: { signal?: AbortSignal } = {}): Promise<Derivation> {
  const bytes = await readFile(path, { signal: options.signal })
  return parseDerivation(bytes, path)
}

/** True for a path whose name ends in `.drv`, which is how Nix tells derivations apart. */
export function isDerivationPath (path: string): boolean {
  return path.endsWith('.drv')
}

export function outputKind (output: DerivationOutput): OutputKind {
  if (output.hashAlgo !== '') {
    if (output.hash === 'impure') return 'impure'
    return output.hash !== '' ? 'fixed' : 'floating'
  }
  return output.path === '' ? 'deferred' : 'inputAddressed'
}

/** A fixed-output derivation: its one output `out` has a hash known in advance. */
export function isFixedOutput (drv: Derivation): boolean {
  const out = drv.outputs.get('out')
  return drv.outputs.size === 1 && out !== undefined && outputKind(out) === 'fixed'
}

/** Output name -> store path, for the outputs whose paths the .drv states. */
export function outputPaths (drv: Derivation): Map<string, string> {
  const paths = new Map<string, string>()
  for (const [name, o] of drv.outputs) if (o.path !== '') paths.set(name, o.path)
  return paths
}

export function inputDrvPaths (drv: Derivation): string[] {
  return [...drv.inputDrvs.keys()]
}

/**
 * The features a builder must offer (`requiredSystemFeatures`): the env variable split on
 * whitespace as Nix tokenises it, or the list in `__json` for structured-attrs derivations.
 */
export function requiredSystemFeatures (drv: Derivation): string[] {
  const json = drv.env.get('__json')
  if (json !== undefined) {
    let attrs: unknown
    try { attrs = JSON.parse(json) } catch { return [] }
    const list = typeof attrs === 'object' && attrs !== null
      ? (attrs as Record<string, unknown>).requiredSystemFeatures
      : undefined
    return Array.isArray(list) ? list.filter((f): f is string => typeof f === 'string') : []
  }
  return (drv.env.get('requiredSystemFeatures') ?? '').split(/[ \t\n\r]+/).filter(f => f !== '')
}

/**
 * `nix show-derivation` JSON (Nix 2.8) for these derivations, keyed by .drv path: the same keys in
 * the same order, Nix's 2-space indentation and string escaping, and its trailing newline.
 */
export function derivationsToJson (drvs: Map<string, Derivation>): Buffer {
  const root = new Map<string, JsonValue>()
  for (const [path, drv] of sortedEntries(drvs)) root.set(path, derivationJson(drv))
  return encodeString(`${writeJson(root, 0)}\n`)
}

type JsonValue = string | boolean | JsonValue[] | Map<string, JsonValue>

function derivationJson (drv: Derivation): Map<string, JsonValue> {
  const outputs = new Map<string, JsonValue>()
  for (const [name, o] of sortedEntries(drv.outputs)) {
    const obj = new Map<string, JsonValue>()
    const kind = outputKind(o)
    if (kind === 'inputAddressed') {
      obj.set('path', o.path)
    } else if (kind === 'fixed') {
      obj.set('path', o.path)
      obj.set('hashAlgo', o.hashAlgo)
      obj.set('hash', base16(o))
    } else if (kind === 'floating') {
      obj.set('hashAlgo', o.hashAlgo)
    } else if (kind === 'impure') {
      obj.set('hashAlgo', o.hashAlgo)
      obj.set('impure', true)
    }
    outputs.set(name, obj)
  }
  return new Map<string, JsonValue>([
    ['outputs', outputs],
    ['inputSrcs', sortedUnique(drv.inputSrcs)],
    ['inputDrvs', new Map(sortedEntries(drv.inputDrvs).map(([p, names]) => [p, sortedUnique(names)]))],
    ['system', drv.system],
    ['builder', drv.builder],
    ['args', drv.args],
    ['env', new Map(sortedEntries(drv.env))]
  ])
}

/** Nix prints a fixed output's hash in base 16 whatever form the .drv held it in. */
function base16 (o: DerivationOutput): string {
  const algo = o.hashAlgo.replace(/^(r:|text:)/, '') as HashAlgorithm
  return Buffer.from(Hash.parse(o.hash, algo).digest).toString('hex')
}

/** Nix's JSONWriter with indentation: `"key": value`, one item a line, `{}`/`[]` when empty. */
function writeJson (v: JsonValue, depth: number): string {
  if (typeof v === 'string') return jsonString(v)
  if (typeof v === 'boolean') return v ? 'true' : 'false'
  const inner = '\n' + '  '.repeat(depth + 1)
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]'
    return '[' + v.map(e => inner + writeJson(e, depth + 1)).join(',') + '\n' + '  '.repeat(depth) + ']'
  }
  if (v.size === 0) return '{}'
  const items = [...v].map(([k, e]) => `${inner}${jsonString(k)}: ${writeJson(e, depth + 1)}`)
  return '{' + items.join(',') + '\n' + '  '.repeat(depth) + '}'
}

/** Nix's toJSON for strings: escapes ", \, \n, \r, \t and other control bytes; all else raw. */
function jsonString (s: string): string {
  return `"${s.replace(/["\\\x00-\x1f]/g, c => ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)}"`
}

// --- ordering as Nix's std::map / std::set order it: by bytes ---

function compareBytes (a: string, b: string): number {
  if (isAscii(a) && isAscii(b)) return a < b ? -1 : a > b ? 1 : 0
  return Buffer.compare(encodeString(a), encodeString(b))
}

function isAscii (s: string): boolean {
  return /^[\x00-\x7f]*$/.test(s)
}

function sortedEntries<V> (m: Map<string, V>): Array<[string, V]> {
  return [...m].sort(([a], [b]) => compareBytes(a, b))
}

function sortedMap<V> (m: Map<string, V>): Map<string, V> {
  return new Map(sortedEntries(m))
}

function sortedUnique (xs: string[]): string[] {
  return [...new Set(xs)].sort(compareBytes)
}

// --- bytes <-> strings, losslessly ---

/** UTF-8 to a string; each byte that is not valid UTF-8 becomes U+DC00 + byte. */
export function decodeBytes (bytes: Uint8Array): string {
  if (isUtf8(bytes)) return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8')
  let s = ''
  let i = 0
  while (i < bytes.length) {
    const n = validSequenceLength(bytes, i)
    if (n === 0) {
      s += String.fromCharCode(0xdc00 + (bytes[i] ?? 0))
      i++
    } else {
      s += Buffer.from(bytes.buffer, bytes.byteOffset + i, n).toString('utf8')
      i += n
    }
  }
  return s
}

/** Length of the well-formed UTF-8 sequence at `i` (Unicode table 3-7), or 0 if there is none. */
function validSequenceLength (b: Uint8Array, i: number): number {
  const c = b[i] ?? 0
  const cont = (k: number, lo = 0x80, hi = 0xbf): boolean => {
    const x = b[i + k]
    return x !== undefined && x >= lo && x <= hi
  }
  if (c < 0x80) return 1
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0
  if (c === 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0
  if ((c >= 0xe1 && c <= 0xec) || c === 0xee || c === 0xef) return cont(1) && cont(2) ? 3 : 0
  if (c === 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0
  if (c === 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0
  if (c >= 0xf1 && c <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0
  if (c === 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0
  return 0
}

// A low surrogate U+DC80..U+DCFF not preceded by a high one: a raw byte kept by decodeBytes.
const ESCAPED_BYTE = /(?<![\ud800-\udbff])[\udc80-\udcff]/
const ESCAPED_BYTES = new RegExp(ESCAPED_BYTE.source, 'g')

/** The inverse of decodeBytes: UTF-8, with escaped raw bytes written back as themselves. */
export function encodeString (s: string): Buffer {
  if (!ESCAPED_BYTE.test(s)) return Buffer.from(s, 'utf8')
  const parts: Buffer[] = []
  let last = 0
  for (const m of s.matchAll(ESCAPED_BYTES)) {
    parts.push(Buffer.from(s.slice(last, m.index), 'utf8'), Buffer.of(s.charCodeAt(m.index) - 0xdc00))
    last = m.index + 1
  }
  parts.push(Buffer.from(s.slice(last), 'utf8'))
  return Buffer.concat(parts)
}
