// The two StoreBackends side by side in one run, on the local store (as root): DaemonStore (Nix's
// worker protocol over `nix-daemon --stdio`) against CliStore (a Nix process per call).
//
//   queries: isValid of 1 and of ~300 paths, queryPathInfo of 1, queryPathInfos of ~300,
//            closureInfos of a ~150-path closure; median and p90 of QUERY_REPS calls each.
//   export:  exportNar of a small path (4 KiB) and of a large one (LARGE_NAR_MIB, zeros), drained;
//            the large one once more by a slow reader, where memory shows whether reads wait for it.
//   import:  importNars of the same two NARs, streamed from a file on disk after the path was
//            deleted, against plain `nix-store --import < file` of the path's export-format file.
//
// The paths are built here, fresh each run (a random tag in their names): a layered DAG whose
// outputs reference the layer before (its closure and ~300 paths with their .drv files), the small
// path and the large one. Everything is deleted at the end (`nix-store --delete`).
// MB_s is 10^6 bytes per second of NAR; ratio is the CLI's median time over the daemon's (above 1:
// the daemon is faster); rss_growth_MiB is the largest rise of this process's RSS over its value
// before the call, sampled every 50 ms; nix_rss_MiB (large NARs) the largest RSS of the Nix process
// doing the work (nix-daemon, nix-store), sampled likewise.
// Environment: MESHBUILD_BENCH_LARGE_NAR_MIB (default 1024), MESHBUILD_BENCH_STORE_REPS (query and
// small-NAR repetitions, default 30), MESHBUILD_BENCH_STORE_NAR_REPS (large-NAR repetitions, default 5).
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream, readFileSync } from 'node:fs'
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { CliStore } from '../node/nix/cli-store.ts'
import { DaemonStore } from '../node/nix/daemon-store.ts'
import { exec, execText } from '../node/nix/exec.ts'
import { nixEnv, type NixSettings } from '../node/nix/nix-config.ts'
import type { ImportInfo, PathInfo, StoreBackend } from '../node/nix/store-backend.ts'
import { within } from '../test/helpers/wait.ts'
import type { BenchRow } from './run.ts'

const MiB = 1024 * 1024
const LARGE_NAR_MIB = Number(process.env.MESHBUILD_BENCH_LARGE_NAR_MIB ?? 1024)
const QUERY_REPS = Number(process.env.MESHBUILD_BENCH_STORE_REPS ?? 30)
const NAR_REPS = Number(process.env.MESHBUILD_BENCH_STORE_NAR_REPS ?? 5)
const SMALL_BYTES = 4096
const DAG_LAYERS = 10
const DAG_WIDTH = 15
const RSS_SAMPLE_MS = 50
// The slow reader of the large export (~200 MB/s at most): a backend that reads on regardless
// of its consumer holds the difference in memory.
const SLOW_EVERY = 4 * MiB
const SLOW_PAUSE_MS = 20
const BUILD_TIMEOUT_MS = 600_000
/** Bounds on one timed call, so that a hung backend fails the bench rather than stalls it. */
const QUERY_TIMEOUT_MS = 60_000
const LARGE_TIMEOUT_MS = Math.max(60_000, LARGE_NAR_MIB * 300)
// The builders run /bin/sh and coreutils by absolute path, which the sandbox hides otherwise.
const SETTINGS: NixSettings = { extra: ['extra-sandbox-paths = /bin /usr /lib /lib64'] }

type Backend = 'daemon' | 'cli'
/** The process that does each backend's work, whose RSS the NAR rows sample. */
const NIX_PROCESS: Record<Backend | 'nix-store --import', string> = { daemon: 'nix-daemon', cli: 'nix-store', 'nix-store --import': 'nix-store' }

/** One timed call: its wall time, the rise of this process's RSS while it ran, and the Nix child's peak RSS. */
interface Sample { ms: number, rssGrowth: number, childPeak?: number }

/** RSS (MiB) of this process's children named `comm` (the Nix process doing the work), summed. */
function childRss (comm: string): number {
  let kib = 0
  try {
    // Node spawns from its main thread, whose children this lists.
    for (const pid of readFileSync(`/proc/self/task/${process.pid}/children`, 'utf8').trim().split(' ')) {
      if (pid === '') continue
      try {
        if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== comm) continue
        kib += Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0)
      } catch { /* it exited meanwhile */ }
    }
  } catch { /* no /proc: not Linux */ }
  return kib / 1024
}

// A real GC before each measurement gives RSS a baseline that earlier garbage does not inflate.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as (() => void) | undefined

async function measured (fn: () => Promise<unknown>, timeoutMs: number, what: string, child?: string): Promise<Sample> {
  gc?.()
  const base = process.memoryUsage.rss()
  let peak = base
  let childPeak = 0
  const sample = (): void => {
    peak = Math.max(peak, process.memoryUsage.rss())
    if (child != null) childPeak = Math.max(childPeak, childRss(child))
  }
  const timer = setInterval(sample, RSS_SAMPLE_MS)
  const started = performance.now()
  try {
    await within(fn(), timeoutMs, what)
    const ms = performance.now() - started
    sample()
    return child != null ? { ms, rssGrowth: (peak - base) / MiB, childPeak } : { ms, rssGrowth: (peak - base) / MiB }
  } finally {
    clearInterval(timer)
  }
}

function quantile (xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.max(0, Math.ceil(q * s.length) - 1)] ?? NaN
}

const round = (x: number, d = 2): number => Number(x.toFixed(d))

interface RowInput {
  op: string
  backend: string
  size: string
  samples: Sample[]
  /** NAR bytes per call: adds MB/s. */
  bytes?: number
  /** The other backend's median (the CLI's, for a daemon row): adds the ratio. */
  cliMedianMs?: number
  /** `nix-store --import`'s median, for import rows. */
  nixImportMedianMs?: number
  check?: string
}

function row (r: RowInput): BenchRow {
  const ms = r.samples.map(s => s.ms)
  const median = quantile(ms, 0.5)
  if (ms.length === 0) {
    return { op: r.op, backend: r.backend, size: r.size, n: 0, median_ms: '-', p90_ms: '-', MB_s: '-', ratio: '-', pct_of_nix_import: '-', rss_growth_MiB: '-', nix_rss_MiB: '-', check: r.check ?? '' }
  }
  return {
    op: r.op,
    backend: r.backend,
    size: r.size,
    n: ms.length,
    median_ms: round(median, median < 10 ? 3 : 1),
    p90_ms: round(quantile(ms, 0.9), median < 10 ? 3 : 1),
    MB_s: r.bytes != null ? round(r.bytes / 1e6 / (median / 1000), 1) : '-',
    ratio: r.cliMedianMs != null ? round(r.cliMedianMs / median, 1) : '-',
    pct_of_nix_import: r.nixImportMedianMs != null ? `${Math.round(100 * r.nixImportMedianMs / median)} %` : '-',
    rss_growth_MiB: round(Math.max(...r.samples.map(s => s.rssGrowth)), 1),
    nix_rss_MiB: r.samples.some(s => s.childPeak != null) ? round(Math.max(...r.samples.map(s => s.childPeak ?? 0)), 1) : '-',
    check: r.check ?? ''
  }
}

/** Timed calls of each backend, and the first error of each (its later calls are skipped). */
interface Timed { samples: Record<Backend, Sample[]>, errors: Partial<Record<Backend, string>> }

/** Both backends' rows for one op, the daemon's with the ratio against the CLI. */
function pair (op: string, size: string, timed: Timed, checks: Record<Backend, string>, bytes?: number): BenchRow[] {
  const cliMedianMs = quantile(timed.samples.cli.map(s => s.ms), 0.5)
  const extra = bytes != null ? { bytes } : {}
  const check = (b: Backend): string => timed.errors[b] ?? checks[b]
  return [
    row({ op, backend: 'daemon', size, samples: timed.samples.daemon, cliMedianMs, check: check('daemon'), ...extra }),
    row({ op, backend: 'cli', size, samples: timed.samples.cli, check: check('cli'), ...extra })
  ]
}

/** Runs `fn` on both backends `reps` times, alternating which goes first. */
async function alternate (what: string, reps: number, timeoutMs: number, stores: Record<Backend, StoreBackend>,
  fn: (s: StoreBackend) => Promise<unknown>, sampleNix = false): Promise<Timed> {
  const timed: Timed = { samples: { daemon: [], cli: [] }, errors: {} }
  for (let i = 0; i < reps; i++) {
    const order: Backend[] = i % 2 === 0 ? ['daemon', 'cli'] : ['cli', 'daemon']
    for (const b of order) {
      if (timed.errors[b] !== undefined) continue
      try {
        const child = sampleNix ? NIX_PROCESS[b] : undefined
        timed.samples[b].push(await measured(async () => await fn(stores[b]), timeoutMs, `${b} ${what}`, child))
      } catch (err) {
        timed.errors[b] = failed(err)
      }
    }
  }
  return timed
}

function failed (err: unknown): string {
  return `FAILED: ${(err instanceof Error ? `${err.name}: ${err.message}` : String(err)).slice(0, 300)}`
}

/** What a PathInfo says, as text, to compare two backends' answers. */
function infoKey (i: PathInfo): string {
  return JSON.stringify([i.path, i.narHash.toString(), i.narSize, i.references, i.deriver ?? '', [...i.signatures].sort(), i.ca ?? ''])
}

/** 'ok', or what differs from the CLI's answer (the reference). */
function compare (got: string[], want: string[]): string {
  if (got.length !== want.length) return `WRONG: ${got.length} entries, the CLI ${want.length}`
  const w = new Set(want)
  const bad = got.filter(g => !w.has(g))
  return bad.length === 0 ? 'ok' : `WRONG: ${bad.length} differ, e.g. ${bad[0]?.slice(0, 200) ?? ''}`
}

async function checked (stores: Record<Backend, StoreBackend>, fn: (s: StoreBackend) => Promise<string[]>): Promise<Record<Backend, string>> {
  const want = await fn(stores.cli)
  let daemon: string
  try {
    daemon = compare(await within(fn(stores.daemon), QUERY_TIMEOUT_MS, 'the daemon\'s answer'), want)
  } catch (err) {
    daemon = failed(err)
  }
  return { daemon, cli: 'reference' }
}

/** Drains a NAR, counting its bytes (and hashing them when asked). */
async function drain (nar: AsyncIterable<Uint8Array>, hash?: ReturnType<typeof createHash>): Promise<number> {
  let n = 0
  for await (const chunk of nar) {
    n += chunk.length
    hash?.update(chunk)
  }
  return n
}

/** Drains a NAR as a slow peer would: a pause of SLOW_PAUSE_MS after every SLOW_EVERY bytes. */
async function drainSlowly (nar: AsyncIterable<Uint8Array>): Promise<number> {
  let n = 0
  let sincePause = 0
  for await (const chunk of nar) {
    n += chunk.length
    sincePause += chunk.length
    if (sincePause >= SLOW_EVERY) {
      sincePause = 0
      await new Promise(resolve => setTimeout(resolve, SLOW_PAUSE_MS))
    }
  }
  return n
}

/** The expression: a DAG whose every output references outputs of the layer before, a root over its last layer, and the two NAR paths. */
function expression (tag: string): string {
  const mk = (name: string, script: string): string =>
    `derivation { name = "bs-${tag}-${name}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ${script} ]; }`
  const binds: string[] = []
  const names: string[] = []
  for (let l = 0; l < DAG_LAYERS; l++) {
    for (let i = 0; i < DAG_WIDTH; i++) {
      const refs = l === 0 ? [] : [`l${l - 1}_${i}`, `l${l - 1}_${(i + 1) % DAG_WIDTH}`]
      // Nix string interpolation puts the referenced output paths into $out: real references.
      const script = `"echo ${tag} ${l} ${i} ${refs.map(r => '${' + r + '}').join(' ')} > $out"`
      binds.push(`  l${l}_${i} = ${mk(`${l}-${i}`, script)};`)
      names.push(`l${l}_${i}`)
    }
  }
  const last = Array.from({ length: DAG_WIDTH }, (_, i) => '${' + `l${DAG_LAYERS - 1}_${i}` + '}')
  binds.push(`  root = ${mk('root', `"echo ${last.join(' ')} > $out"`)};`)
  binds.push(`  small = ${mk('small', `"/usr/bin/head -c ${SMALL_BYTES} /dev/urandom > $out"`)};`)
  binds.push(`  large = ${mk('large', `"/usr/bin/head -c ${LARGE_NAR_MIB * MiB} /dev/zero > $out"`)};`)
  return `let\n${binds.join('\n')}\nin { dag = [ ${names.join(' ')} ]; root = root; small = small; large = large; }\n`
}

interface Made { dagDrvs: string[], dagOuts: string[], root: string, small: string, large: string }

/** Instantiates and builds the paths; `created` gets the .drv files first, so that a failed build can be cleaned up. */
async function makePaths (dir: string, tag: string, created: string[]): Promise<Made> {
  const file = join(dir, 'paths.nix')
  await writeFile(file, expression(tag))
  const drvs = (await execText('nix-instantiate', [file, '-A', 'dag', '-A', 'root', '-A', 'small', '-A', 'large'], { settings: SETTINGS }))
    .split('\n').filter(l => l !== '').map(l => l.replace(/!.*$/, ''))
  created.push(...drvs)
  const signal = AbortSignal.timeout(BUILD_TIMEOUT_MS)
  const outs = (await execText('nix-store', ['--realise', '-j', '8', ...drvs], { settings: SETTINGS, signal })).split('\n').filter(l => l !== '')
  if (outs.length !== drvs.length) throw new Error(`built ${outs.length} outputs of ${drvs.length} derivations`)
  const n = DAG_LAYERS * DAG_WIDTH
  return {
    dagDrvs: drvs.slice(0, n),
    dagOuts: outs.slice(0, n),
    root: outs[n] as string,
    small: outs[n + 1] as string,
    large: outs[n + 2] as string
  }
}

/** `nix-store --delete`, retried briefly: a daemon just closed may still hold its temp roots. */
async function deletePaths (paths: string[]): Promise<void> {
  if (paths.length === 0) return
  let last = ''
  for (let attempt = 0; attempt < 20; attempt++) {
    const r = await exec('nix-store', ['--delete', ...paths], { settings: SETTINGS })
    if (r.code === 0) return
    last = r.stderr
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`nix-store --delete ${paths.join(' ')} kept failing: ${last.trim().slice(-500)}`)
}

/** Runs a Nix command with stdin and stdout on files (or ignored). */
async function runWithFiles (cmd: string, args: string[], stdinFile: string | null, stdoutFile: string | null): Promise<void> {
  const input = stdinFile != null ? await open(stdinFile, 'r') : null
  const output = stdoutFile != null ? await open(stdoutFile, 'w') : null
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(cmd, args, { env: nixEnv(SETTINGS), stdio: [input?.fd ?? 'ignore', output?.fd ?? 'ignore', 'pipe'] })
      let err = ''
      child.stderr?.on('data', (d: Buffer) => { err += d.toString() })
      child.on('error', reject)
      child.on('close', code => {
        if (code === 0) resolve()
        else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${err.trim().slice(-500)}`))
      })
    })
  } finally {
    await input?.close()
    await output?.close()
  }
}

function importInfo (i: PathInfo): ImportInfo {
  const info: ImportInfo = { path: i.path, narHash: i.narHash, narSize: i.narSize, references: i.references }
  if (i.deriver != null) info.deriver = i.deriver
  return info
}

async function * fromFile (path: string, narFile: string): AsyncGenerator<{ path: string, nar: AsyncIterable<Uint8Array> }> {
  yield { path, nar: createReadStream(narFile) }
}

async function queryRows (stores: Record<Backend, StoreBackend>, made: Made): Promise<BenchRow[]> {
  const many = [...made.dagOuts, ...made.dagDrvs]
  const one = made.root
  const rows: BenchRow[] = []
  // The answers are compared first: that call also opens the daemon's connection, which the
  // timed calls then find open (the cost of opening one is the "new store" row).
  const op = async (name: string, size: string, call: (s: StoreBackend) => Promise<unknown>, answer: (s: StoreBackend) => Promise<string[]>): Promise<void> => {
    const checks = await checked(stores, answer)
    rows.push(...pair(name, size, await alternate(name, QUERY_REPS, QUERY_TIMEOUT_MS, stores, call), checks))
  }
  const sets = async (s: StoreBackend, ps: string[]): Promise<string[]> => [...await s.isValid(ps)].sort()
  const infos = async (s: StoreBackend, ps: string[]): Promise<string[]> => [...(await s.queryPathInfos(ps)).values()].map(infoKey)

  await op('isValid', '1 path', async s => await s.isValid([one]), async s => await sets(s, [one]))
  await op('isValid', `${many.length} paths`, async s => await s.isValid(many), async s => await sets(s, many))
  await op('queryPathInfo', '1 path', async s => await s.queryPathInfo(one),
    async s => { const i = await s.queryPathInfo(one); return i != null ? [infoKey(i)] : [] })
  await op('queryPathInfos', `${many.length} paths`, async s => await s.queryPathInfos(many), async s => await infos(s, many))
  const closureSize = (await stores.cli.closureInfos([one])).infos.length
  await op('closureInfos', `${closureSize} paths`, async s => await s.closureInfos([one]), async s => {
    // Order matters too: references first. Each entry says whether its references came before it.
    const seen = new Set<string>()
    const { infos: list, missing } = await s.closureInfos([one])
    const out = list.map(i => {
      const ordered = i.references.every(r => r === i.path || seen.has(r))
      seen.add(i.path)
      return `${infoKey(i)} ordered=${ordered}`
    })
    return [...out, `missing=${missing.join(',')}`]
  })

  // A new DaemonStore's first request starts nix-daemon --stdio and does the handshake.
  const cold: Timed = { samples: { daemon: [], cli: [] }, errors: {} }
  for (let i = 0; i < Math.min(QUERY_REPS, 10); i++) {
    const fresh = new DaemonStore({ settings: SETTINGS })
    try {
      cold.samples.daemon.push(await measured(async () => await fresh.isValid([one]), QUERY_TIMEOUT_MS, 'a new DaemonStore\'s isValid'))
    } catch (err) {
      cold.errors.daemon ??= failed(err)
    } finally {
      fresh.close()
    }
    cold.samples.cli.push(await measured(async () => await stores.cli.isValid([one]), QUERY_TIMEOUT_MS, 'CliStore isValid'))
  }
  rows.push(...pair('isValid, new store', '1 path', cold, { daemon: '', cli: '' }))
  return rows
}

async function exportRows (stores: Record<Backend, StoreBackend>, path: string, size: string, reps: number, timeoutMs: number,
  slowReader = false): Promise<BenchRow[]> {
  const info = await stores.cli.queryPathInfo(path)
  if (info == null) throw new Error(`${path} is not valid`)
  // The untimed first export of each checks the NAR's hash and size, and warms the page cache.
  const checks: Record<Backend, string> = { daemon: '', cli: '' }
  for (const b of ['daemon', 'cli'] as const) {
    try {
      const hash = createHash(info.narHash.algorithm)
      const n = await within(drain(stores[b].exportNar(path), hash), timeoutMs, `${b} exportNar of ${path}`)
      const ok = n === info.narSize && Buffer.compare(hash.digest(), Buffer.from(info.narHash.digest)) === 0
      checks[b] = ok ? 'ok' : `WRONG: ${n} bytes (want ${info.narSize}) or another hash`
    } catch (err) {
      checks[b] = failed(err)
    }
  }
  const timed = await alternate(`exportNar of ${size}`, reps, timeoutMs, stores, async s => {
    const n = await drain(s.exportNar(path))
    if (n !== info.narSize) throw new Error(`exportNar(${path}) gave ${n} bytes, want ${info.narSize}`)
  }, slowReader)
  const rows = pair('exportNar', size, timed, checks, info.narSize)
  if (slowReader) {
    const slow = await alternate(`slowly read exportNar of ${size}`, 1, timeoutMs * 2, stores, async s => {
      const n = await drainSlowly(s.exportNar(path))
      if (n !== info.narSize) throw new Error(`exportNar(${path}) gave ${n} bytes, want ${info.narSize}`)
    }, true)
    rows.push(...pair('exportNar, slow reader', size, slow, { daemon: checks.daemon, cli: checks.cli }, info.narSize))
  }
  return rows
}

type Importer = 'daemon' | 'cli' | 'nix-store --import'

async function importRows (dir: string, path: string, size: string, reps: number, timeoutMs: number, sampleNix = false): Promise<BenchRow[]> {
  const cli = new CliStore({ settings: SETTINGS })
  const pi = await cli.queryPathInfo(path)
  if (pi == null) throw new Error(`${path} is not valid`)
  const info = importInfo(pi)
  const narFile = join(dir, 'import.nar')
  const exportFile = join(dir, 'import.export')
  await pipeline(Readable.from(cli.exportNar(path)), createWriteStream(narFile))
  await runWithFiles('nix-store', ['--export', path], null, exportFile)
  const samples: Record<Importer, Sample[]> = { daemon: [], cli: [], 'nix-store --import': [] }
  const checks: Record<Importer, string> = { daemon: 'ok', cli: 'ok', 'nix-store --import': 'ok' }
  const importers: Importer[] = ['daemon', 'cli', 'nix-store --import']
  try {
    // A fresh DaemonStore per import: the daemon that imported a path holds a temp root on it
    // until it exits, and the next round has to delete the path again.
    for (let i = 0; i < reps; i++) {
      const order = importers.map((_, k) => importers[(k + i) % importers.length] as Importer)
      for (const who of order) {
        await deletePaths([path])
        // Each import starts with the disk's write-back done: the last one's does not count here.
        await runWithFiles('sync', [], null, null)
        const daemon = who === 'daemon' ? new DaemonStore({ settings: SETTINGS, poolSize: 1 }) : null
        try {
          // Open the daemon's connection before the clock starts: an import on a warm store.
          if (daemon != null) await within(daemon.isValid([path]), QUERY_TIMEOUT_MS, 'the daemon\'s first answer')
          samples[who].push(await measured(async () => {
            if (who === 'nix-store --import') await runWithFiles('nix-store', ['--import'], exportFile, null)
            else await (daemon ?? cli).importNars([info], fromFile(path, narFile))
          }, timeoutMs, `${who} import of ${size}`, sampleNix ? NIX_PROCESS[who] : undefined))
          // Registered as it was before, references and deriver included.
          const got = await cli.queryPathInfo(path)
          if (got == null || infoKey(got) !== infoKey(pi)) checks[who] = `WRONG: registered as ${got != null ? infoKey(got) : 'nothing'}, was ${infoKey(pi)}`
          // And the files on disk are what was registered (once each: it rereads the whole path).
          if (i === 0) {
            const v = await exec('nix-store', ['--verify-path', path], { settings: SETTINGS })
            if (v.code !== 0) checks[who] = `WRONG: nix-store --verify-path: ${v.stderr.trim().slice(-200)}`
          }
        } catch (err) {
          checks[who] = failed(err)
        } finally {
          daemon?.close()
        }
      }
    }
  } finally {
    // Leave the path valid, as it was, whatever failed.
    if (!(await cli.isValid([path])).has(path)) await runWithFiles('nix-store', ['--import'], exportFile, null)
    await rm(narFile, { force: true })
    await rm(exportFile, { force: true })
  }
  const cliMedianMs = quantile(samples.cli.map(s => s.ms), 0.5)
  const nixImportMedianMs = quantile(samples['nix-store --import'].map(s => s.ms), 0.5)
  return [
    row({ op: 'importNars', backend: 'daemon', size, samples: samples.daemon, bytes: info.narSize, cliMedianMs, nixImportMedianMs, check: checks.daemon }),
    row({ op: 'importNars', backend: 'cli', size, samples: samples.cli, bytes: info.narSize, nixImportMedianMs, check: checks.cli }),
    row({ op: 'import', backend: 'nix-store --import', size, samples: samples['nix-store --import'], bytes: info.narSize, check: checks['nix-store --import'] })
  ]
}

export async function run (): Promise<BenchRow[]> {
  if (process.getuid?.() !== 0) throw new Error('the store bench runs as root, on the local store')
  const dir = await mkdtemp('/tmp/meshbuild-bench-store-')
  const tag = randomBytes(4).toString('hex')
  const createdDrvs: string[] = []
  const daemon = new DaemonStore({ settings: SETTINGS })
  const stores: Record<Backend, StoreBackend> = { daemon, cli: new CliStore({ settings: SETTINGS }) }
  let daemonClosed = false
  try {
    process.stderr.write(`store bench: building ${DAG_LAYERS * DAG_WIDTH + 3} paths (large NAR ${LARGE_NAR_MIB} MiB), tag ${tag}\n`)
    const made = await makePaths(dir, tag, createdDrvs)
    const rows: BenchRow[] = []
    process.stderr.write(`store bench: queries, ${QUERY_REPS} reps each\n`)
    rows.push(...await queryRows(stores, made))
    process.stderr.write('store bench: exports\n')
    rows.push(...await exportRows(stores, made.small, `${SMALL_BYTES / 1024} KiB`, QUERY_REPS, QUERY_TIMEOUT_MS))
    rows.push(...await exportRows(stores, made.large, `${LARGE_NAR_MIB} MiB`, NAR_REPS, LARGE_TIMEOUT_MS, true))
    // The imports delete their path: no daemon of ours may hold a temp root on it.
    daemon.close()
    daemonClosed = true
    process.stderr.write('store bench: imports\n')
    rows.push(...await importRows(dir, made.small, `${SMALL_BYTES / 1024} KiB`, Math.min(QUERY_REPS, 10), QUERY_TIMEOUT_MS))
    rows.push(...await importRows(dir, made.large, `${LARGE_NAR_MIB} MiB`, NAR_REPS, LARGE_TIMEOUT_MS, true))
    const s = daemon.stats
    process.stderr.write(`store bench: query DaemonStore stats: opened ${s.opened}, recycled ${s.recycled}, lost ${s.lost}\n`)
    return rows
  } finally {
    if (!daemonClosed) daemon.close()
    if (createdDrvs.length > 0) {
      // The outputs as the .drv files name them: those of a build that failed half-way too.
      const outs = (await execText('nix-store', ['--query', '--outputs', ...createdDrvs])).split('\n').filter(l => l !== '')
      await deletePaths([...await new CliStore().isValid([...outs, ...createdDrvs])])
    }
    await rm(dir, { recursive: true, force: true })
  }
}

// Run alone: `node --import ./test/helpers/nix-test-env.ts bench/store.ts`.
if (import.meta.url === `file://${process.argv[1]}`) console.table(await run())
