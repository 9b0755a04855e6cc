// Generated blocks of docs/benchmarks.md: a bench rewrites only the lines between its own markers,
// `<!-- generated: NAME (npm run bench) begin -->` … `<!-- generated: NAME end -->`, so people can
// edit the rest of the file while benches run. Also what each block says about where it came from.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { cpus, loadavg, release, totalmem } from 'node:os'
import { dirname, join, basename, relative } from 'node:path'

export class DocBlockError extends Error {
  override name = 'DocBlockError'
}

export const beginMarker = (name: string): string => `<!-- generated: ${name} (npm run bench) begin -->`
export const endMarker = (name: string): string => `<!-- generated: ${name} end -->`

export interface BlockPlace {
  /** Where a missing block goes: right under the first line that starts with this (`## Simulator`). */
  heading: string
  /** Written once, between the heading and a new block, never touched again. */
  intro?: string
}

/** Where each bench's block sits in docs/benchmarks.md. */
export const PLACES = {
  sim: {
    heading: '## Simulator',
    intro: 'The block below is generated: `node bench/run.ts sim` (`bench/sim-report.ts`, also run by\n' +
      '`npm run bench`) rewrites only what lies between its markers; the dated text after it is the\n' +
      'hand-written record of earlier runs.'
  },
  targets: {
    heading: '## Targets',
    intro: 'The block below is generated: `node bench/run.ts targets` (the sleep DAG part) rewrites only what\n' +
      'lies between its markers; the dated sections after it are hand-written records of earlier runs.'
  }
} satisfies Record<string, BlockPlace>

/**
 * The document with block `name` holding `body`: between its markers if it has them, else a new
 * block under the heading. Every byte outside the markers stays as it was.
 */
export function replaceBlock (text: string, name: string, body: string, place: BlockPlace): string {
  const begin = beginMarker(name)
  const end = endMarker(name)
  const content = `\n${body.replace(/\n+$/, '')}\n`
  if (body.includes(begin) || body.includes(end)) throw new DocBlockError(`the ${name} block's body holds one of its own markers`)
  const b = text.indexOf(begin)
  const e = text.indexOf(end)
  if (b >= 0 && text.indexOf(begin, b + 1) >= 0) throw new DocBlockError(`${begin} appears more than once: fix the file by hand`)
  if (e >= 0 && text.indexOf(end, e + 1) >= 0) throw new DocBlockError(`${end} appears more than once: fix the file by hand`)
  if (b >= 0 && e < 0) throw new DocBlockError(`${begin} has no ${end} after it: the file was cut or hand-edited; restore the end marker (nothing was written)`)
  if (b < 0 && e >= 0) throw new DocBlockError(`${end} has no ${begin} before it: restore the begin marker (nothing was written)`)
  if (b >= 0) {
    if (e < b) throw new DocBlockError(`${end} comes before ${begin}: fix the file by hand`)
    return text.slice(0, b + begin.length) + content + text.slice(e)
  }
  const lines = text.split('\n')
  const h = lines.findIndex(l => l.startsWith('#') && l.startsWith(place.heading))
  if (h < 0) throw new DocBlockError(`no heading starting "${place.heading}" to put the ${name} block under`)
  const block = [...(place.intro !== undefined ? ['', place.intro] : []), '', begin + content + end]
  return [...lines.slice(0, h + 1), ...block, ...lines.slice(h + 1)].join('\n')
}

/**
 * Writes block `name` of `file`. Reads the file only now, and re-reads it before the rename: if
 * someone saved it meanwhile, starts over from their version rather than undo their edit.
 */
export async function writeBlock (file: string, name: string, body: string, place: BlockPlace): Promise<void> {
  const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.tmp`)
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = await readFile(file, 'utf8')
    const after = replaceBlock(before, name, body, place)
    await writeFile(tmp, after, { mode: (await stat(file)).mode & 0o777 })
    if (await readFile(file, 'utf8') === before) {
      await rename(tmp, file)
      return
    }
  }
  await rm(tmp, { force: true })
  throw new DocBlockError(`${file} kept changing while the ${name} block was written; not written`)
}

/** A paragraph broken into lines of at most `width` characters (a longer word stays whole). */
export function wrap (text: string, width = 100): string {
  const lines: string[] = []
  let line = ''
  for (const word of text.split(' ')) {
    if (line !== '' && line.length + 1 + word.length > width) { lines.push(line); line = word } else line = line === '' ? word : `${line} ${word}`
  }
  return [...lines, line].join('\n')
}

/** A Markdown table of these columns of the rows. */
export function markdownTable (rows: Array<Record<string, string | number>>, columns: string[]): string {
  const cell = (v: string | number | undefined): string => String(v ?? '').replace(/\|/g, '\\|')
  return [
    `| ${columns.join(' | ')} |`,
    `|${columns.map(() => '---').join('|')}|`,
    ...rows.map(r => `| ${columns.map(c => cell(r[c])).join(' | ')} |`)
  ].join('\n')
}

function run (cmd: string, args: string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trimEnd()
  } catch {
    return undefined
  }
}

/** The command line this process was started with, with the given environment knobs in front. */
export function commandLine (envPrefixes: string[]): string {
  const env = Object.entries(process.env)
    .filter(([k, v]) => v !== undefined && envPrefixes.some(p => k.startsWith(p)))
    .map(([k, v]) => `${k}=${v ?? ''}`)
  const script = process.argv[1] === undefined ? [] : [relative(process.cwd(), process.argv[1])]
  return [...env, process.argv0, ...process.execArgv, ...script, ...process.argv.slice(2)].join(' ')
}

/** The commit in Markdown, naming the files under these paths that differ from it (the run measured those). */
export function gitCommit (paths: string[]): string {
  const head = run('git', ['rev-parse', '--short', 'HEAD'])
  if (head === undefined) return 'an unknown commit'
  const dirty = (run('git', ['status', '--porcelain', '--', ...paths]) ?? '').split('\n').filter(l => l !== '').map(l => `\`${l.slice(3)}\``)
  return dirty.length === 0 ? `\`${head}\`` : `\`${head}\` with uncommitted changes to ${dirty.join(', ')}`
}

/** `nproc`, memory, CPU model, kernel and Node: the same on every block. */
export function machine (): string {
  const nproc = run('nproc', []) ?? String(cpus().length)
  let model = cpus()[0]?.model ?? 'unknown CPU'
  try {
    model = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? model
  } catch {}
  return `${nproc} CPUs (\`nproc\`), ${(totalmem() / 2 ** 30).toFixed(1)} GiB RAM, CPU "${model}", Linux ${release()}, Node ${process.version}`
}

export const loadAverage = (): string => loadavg().map(x => x.toFixed(2)).join(' ')
