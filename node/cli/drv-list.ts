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

export class DrvListError extends Error {
  override name = 'DrvListError'
  readonly problems: DrvListProblem[]
  constructor (source: string, problems: DrvListProblem[]) {
    super(problems.map(p => `${source}:${p.line}: ${p.problem}: ${JSON.stringify(p.text)}`).join('\n'))
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
