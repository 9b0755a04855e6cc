// `meshbuild submit FILE`: build the derivations listed in FILE (or stdin) on the mesh.
import { readFile } from 'node:fs/promises'
import type { Argv, CommandModule } from 'yargs'
import { openLocalStore } from '../../nix/local-store.ts'
import { controlCall, controlRequest, NodeUnavailable } from '../../control/control-client.ts'
import type { SubmissionReport } from '../../mesh/reports.ts'
import { checkValid, parseDrvList } from '../drv-list.ts'
import { dataDirOption } from '../data-dir.ts'
import { CommandFailed, ExitCode, UsageError } from '../exit-codes.ts'
import { countsOf, ProgressDisplay } from '../progress.ts'

interface SubmitArgs {
  file: string
  'data-dir': string
  priority: number
  timeout?: number
  'max-silent-time'?: number
  detach: boolean
  json: boolean
  'check-reproducible': boolean
  'print-build-logs': boolean
}

const LOG_TAIL_SHOWN = 10

export const submitCommand: CommandModule<object, SubmitArgs> = {
  command: 'submit <file>',
  describe: 'Build the derivations listed in FILE (one .drv path a line; - for stdin) on the mesh',
  builder: (y: Argv) => y
    .positional('file', { type: 'string', describe: 'The drv list, or - for standard input', demandOption: true })
    .option('data-dir', dataDirOption)
    .option('priority', { type: 'number', default: 5, describe: 'Priority 0..9, 0 most urgent' })
    .option('timeout', { type: 'number', describe: 'Seconds a build may take' })
    .option('max-silent-time', { type: 'number', describe: 'Seconds a build may go without output' })
    .option('check-reproducible', {
      type: 'boolean',
      default: false,
      describe: 'Build each derivation on two different peers; admit its outputs only if their NAR hashes agree (exit 104 if not)'
    })
    .option('print-build-logs', {
      alias: 'L',
      type: 'boolean',
      default: false,
      describe: 'Print every build\'s log lines as they are written, prefixed with the derivation\'s name (as nix build -L)'
    })
    .option('detach', { type: 'boolean', default: false, describe: 'Queue the submission, print its id and exit' })
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object with the outcome' })
    .example('$0 submit drvs.txt', 'build and wait, with a progress bar')
    .example('nix-instantiate release.nix | $0 submit - --priority 0', 'urgent, from a pipe') as unknown as Argv<SubmitArgs>,
  handler: async (args) => {
    if (!Number.isInteger(args.priority) || args.priority < 0 || args.priority > 9) throw new UsageError(`--priority must be 0..9, not ${args.priority}`)
    for (const k of ['timeout', 'max-silent-time'] as const) {
      const v = args[k]
      if (v !== undefined && (!Number.isInteger(v) || v <= 0)) throw new UsageError(`--${k} must be a positive whole number of seconds`)
    }
    // yargs hands a lone '-' positional over as ''.
    const fromStdin = args.file === '-' || args.file === ''
    const source = fromStdin ? '<stdin>' : args.file
    let text: string
    try {
      text = fromStdin ? await readStdin() : await readFile(args.file, 'utf8')
    } catch (err) {
      throw new CommandFailed(`cannot read ${source}: ${(err as Error).message}`)
    }
    // Every line checked before anything is queued.
    const entries = parseDrvList(text, source)
    const store = openLocalStore()
    try {
      checkValid(entries, await store.isValid(entries.map(e => e.drvPath)), source)
    } finally {
      store.close()
    }
    const drvPaths = [...new Set(entries.map(e => e.drvPath))]

    const reply = await controlCall(args['data-dir'], {
      op: 'submit',
      drvPaths,
      priority: args.priority,
      ...(args.timeout !== undefined ? { timeout: args.timeout } : {}),
      ...(args['max-silent-time'] !== undefined ? { maxSilentTime: args['max-silent-time'] } : {}),
      ...(args['check-reproducible'] ? { checkReproducible: true } : {})
    })
    if (!('id' in reply)) throw new CommandFailed('the node answered the submission without an id')
    const id = reply.id
    if (args.detach) {
      process.stdout.write(args.json ? `${JSON.stringify({ id, state: 'running' })}\n` : `${id}\n`)
      return
    }
    if (!args.json) process.stderr.write(`submitted ${id}: ${drvPaths.length} derivation(s)\n`)

    const display = new ProgressDisplay(process.stderr, !args.json)
    let last: SubmissionReport | undefined
    let awaitingSaid = 0
    try {
      const printLogs = args['print-build-logs']
      for await (const r of controlRequest(args['data-dir'], { op: 'watch', id, ...(printLogs ? { logs: true } : {}) })) {
        if ('logLines' in r) {
          // On stderr, as nix build -L: stdout carries only the outputs (or --json).
          display.clear()
          const prefix = `${derivationName(r.logLines.drvPath)}> `
          process.stderr.write(r.logLines.lines.map(l => `${prefix}${l}\n`).join(''))
          if (last !== undefined) display.update(countsOf(last)) // the bar again, below the lines
          continue
        }
        if (!('report' in r)) continue
        last = r.report
        display.update(countsOf(r.report))
        // A checked job built once waits for another peer able to build it; say so once per change.
        const awaiting = r.report.results.filter(x => x.check?.awaiting !== undefined).length
        if (!args.json && awaiting > 0 && awaiting !== awaitingSaid) {
          display.clear()
          process.stderr.write(`${awaiting} job(s) built once, awaiting a second builder (another peer that can build them)\n`)
        }
        awaitingSaid = awaiting
      }
    } catch (err) {
      display.done()
      if (err instanceof NodeUnavailable) throw new CommandFailed(err.message, ExitCode.unavailable)
      throw err
    }
    display.done()
    if (last === undefined || last.state === 'running') {
      throw new CommandFailed(`lost the node while watching ${id}; it resumes when the node restarts ('meshbuild status')`, ExitCode.unavailable)
    }
    printOutcome(last, args.json)
    if (last.state === 'built') return
    // As `nix-store --check`: 104 when a build was found not deterministic.
    const nonDeterministic = last.results.some(r => r.state === 'failed' && r.failure?.kind === 'not-deterministic')
    throw new CommandFailed('', nonDeterministic ? ExitCode.notDeterministic : ExitCode.failure)
  }
}

function printOutcome (report: SubmissionReport, json: boolean): void {
  if (json) {
    const results = report.results.map(r => ({
      drvPath: r.drvPath,
      requested: r.requested,
      state: r.state,
      outputs: r.outputs,
      ...(r.builtBy !== undefined ? { builtBy: r.builtBy } : {}),
      ...(r.failure !== undefined ? { failure: r.failure } : {}),
      ...(r.check !== undefined ? { check: r.check } : {})
    }))
    process.stdout.write(`${JSON.stringify({ id: report.id, state: report.state, results }, null, 2)}\n`)
    return
  }
  for (const r of report.results) {
    if (r.state === 'failed' && r.failure?.kind === 'not-deterministic') {
      process.stderr.write(`error: ${r.drvPath} is not deterministic (exit code ${ExitCode.notDeterministic}):\n`)
      for (const b of r.check?.builds ?? []) {
        process.stderr.write(`  built by ${b.builtBy}: ${Object.entries(b.narHashes).map(([n, h]) => `${n} ${h}`).join(', ')}\n`)
      }
      process.stderr.write(`  ${r.failure.message}\n`)
    } else if (r.state === 'failed') {
      process.stderr.write(`error: ${r.drvPath} failed: ${r.failure?.message ?? 'no reason given'}\n`)
      const tail = r.failure?.logTail?.slice(-LOG_TAIL_SHOWN) ?? []
      if (tail.length > 0) process.stderr.write(`  last ${tail.length} log lines:\n${tail.map(l => `    ${l}`).join('\n')}\n`)
    }
  }
  for (const r of report.results) {
    if (r.state === 'dependency-failed') process.stderr.write(`not built: ${r.drvPath}: ${r.failure?.message ?? 'a dependency failed'}\n`)
  }
  for (const r of report.results) {
    if (r.requested && (r.state === 'built' || r.state === 'substituted')) {
      for (const p of Object.values(r.outputs)) process.stdout.write(`${p}\n`)
    }
  }
}

/** `hello-2.12` from `/nix/store/<hash>-hello-2.12.drv`, as Nix prefixes build log lines. */
function derivationName (drvPath: string): string {
  const base = drvPath.slice(drvPath.lastIndexOf('/') + 1)
  return base.slice(base.indexOf('-') + 1).replace(/\.drv$/, '')
}

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of process.stdin) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}
