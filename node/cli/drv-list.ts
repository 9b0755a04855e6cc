// Reading a drv list: one .drv store path per line, `#` comments and blank lines allowed.
// Every line is checked before anything is submitted; problems name their line.
import { parseStorePath, isDerivation, StorePathError } from '../../protocols/nix/store-path.ts'

export interface DrvListEntry {
  line: number
  drvPath: string
}

export interface DrvListProblem {
  line: number
  text: string
  problem: string
}

/** A list of garbage (a binary file by mistake) names this many problems, then how many more. */
export const MAX_PROBLEMS_SHOWN = 20
/** A quoted line is cut to this many characters: a binary file may have one line of megabytes. */
export const MAX_QUOTED_CHARS = 200

// What a terminal may act on rather than show: C0 controls (ESC starts escape sequences), DEL,
// C1 controls (U+009B is a one-byte CSI), bidi overrides and isolates (reorder what is shown),
// line separators, and U+FFFD, which stands for bytes that were not UTF-8.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff\ufffd]/gu

/** `text` made safe to print: unprintable characters as \xNN / \uNNNN, backslashes doubled, cut to `max`. */
export function printable (text: string, max = MAX_QUOTED_CHARS): string {
  const cut = [...text]
  const shown = cut.length > max ? cut.slice(0, max).join('') : text
  const escaped = shown.replace(/\\/g, '\\\\').replace(UNPRINTABLE, (c) => {
    const code = c.codePointAt(0) ?? 0
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`
  })
  return cut.length > max ? `${escaped}… (${cut.length} characters)` : escaped
}

export class DrvListError extends Error {
  override name = 'DrvListError'
  readonly problems: DrvListProblem[]
  constructor (source: string, problems: DrvListProblem[]) {
    // The problem text quotes the line too (a StorePathError names the bad path): escape it all.
    const lines = problems.slice(0, MAX_PROBLEMS_SHOWN).map(p => `${printable(source)}:${p.line}: ${printable(p.problem, MAX_QUOTED_CHARS * 2)}: "${printable(p.text).replace(/"/g, '\\"')}"`)
    if (problems.length > MAX_PROBLEMS_SHOWN) lines.push(`${printable(source)}: and ${problems.length - MAX_PROBLEMS_SHOWN} more bad line(s)`)
    super(lines.join('\n'))
    this.problems = problems
  }
}

/** Parses the text of a drv list; throws DrvListError listing every bad line. */
export function parseDrvList (text: string, source: string): DrvListEntry[] {
  const entries: DrvListEntry[] = []
  const problems: DrvListProblem[] = []
  const lines = text.split('\n')
  lines.forEach((raw, i) => {
    const line = i + 1
    const hash = raw.indexOf('#')
    const content = (hash >= 0 ? raw.slice(0, hash) : raw).trim()
    if (content === '') return
    try {
      parseStorePath(content)
    } catch (err) {
      const why = err instanceof StorePathError ? err.message : String(err)
      problems.push({ line, text: content, problem: `not a store path (${why})` })
      return
    }
    if (!isDerivation(content)) {
      problems.push({ line, text: content, problem: 'not a derivation (a .drv store path)' })
      return
    }
    entries.push({ line, drvPath: content })
  })
  if (problems.length > 0) throw new DrvListError(source, problems)
  if (entries.length === 0) throw new DrvListError(source, [{ line: lines.length, text: '', problem: 'the list names no derivation' }])
  return entries
}

/** Checks that every entry is valid in the local store, naming the lines that are not. */
export function checkValid (entries: DrvListEntry[], valid: Set<string>, source: string): void {
  const problems = entries.filter(e => !valid.has(e.drvPath))
    .map(e => ({ line: e.line, text: e.drvPath, problem: 'not valid in the local Nix store' }))
  if (problems.length > 0) throw new DrvListError(source, problems)
}
