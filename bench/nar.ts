// NAR throughput and memory, ours against Nix's own, in one run on one tree:
//   dump:    `nix-store --dump TREE`      vs `meshbuild nar dump-path TREE`, stdout piped to a sink
//   restore: `nix-store --restore DIR`    vs `meshbuild nar restore DIR`, the NAR piped in by cat
//   startup: `meshbuild --help`, what every meshbuild command pays before any NAR work, and
//            `node -e 0`, the part of it that is Node's own
// Each command runs under `/usr/bin/time`, whose figures are the peak RSS (KiB) and the CPU time
// (user + system) of that command alone; CPU time is the steadier figure on a shared machine.
// Runs alternate between the two tools; the median of RUNS runs is reported.
// Restores go to tmpfs (/dev/shm) when there is one, so the figures compare the tools rather
// than the disk's write-back (on this machine's disk, nix-store --restore alone varied 6-17 s);
// BENCH_NAR_RESTORE_DIR chooses another place.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream, existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { nixEnv } from '../node/nix/nix-config.ts'
import type { BenchRow } from './run.ts'

const MiB = 1024 * 1024
const RUNS = Number(process.env.BENCH_NAR_RUNS ?? 5)
/** Tree shape: a few large files and many small ones, about 1 GiB in all. */
const LARGE_FILES = 4
const LARGE_FILE_SIZE = 192 * MiB
const SMALL_DIRS = 40
const SMALL_PER_DIR = 400
const SMALL_MAX = 32 * 1024

// The compiled CLI, as an npm-installed meshbuild runs it (`npm run bench` builds it first); the
// checkout's bin/meshbuild.js would add Node's type stripping to every start.
const MESHBUILD = fileURLToPath(new URL('../dist/node/cli/main.js', import.meta.url))
const TIME = '/usr/bin/time'

interface Measured { seconds: number, cpuSeconds: number, peakRssMiB: number, bytes: number }

/** Builds the tree; returns its total file bytes and file count. */
export async function makeTree (root: string): Promise<{ bytes: number, files: number }> {
  const block = randomBytes(4 * MiB)
  let bytes = 0
  let files = 0
  await mkdir(join(root, 'large'), { recursive: true })
  for (let i = 0; i < LARGE_FILES; i++) {
    const out = createWriteStream(join(root, 'large', `blob-${i}.bin`))
    for (let done = 0; done < LARGE_FILE_SIZE; done += block.length) {
      block[0] = i // each file differs
      if (!out.write(block)) await new Promise<void>(resolve => out.once('drain', () => { resolve() }))
    }
    // An odd tail so the file needs padding.
    out.end(block.subarray(0, 5))
    await new Promise<void>(resolve => out.once('close', () => { resolve() }))
    bytes += LARGE_FILE_SIZE + 5
    files++
  }
  for (let d = 0; d < SMALL_DIRS; d++) {
    const dir = join(root, 'small', `d${d}`)
    await mkdir(dir, { recursive: true })
    const writes: Array<Promise<void>> = []
    for (let f = 0; f < SMALL_PER_DIR; f++) {
      const size = Math.floor(Math.random() * SMALL_MAX)
      const start = Math.floor(Math.random() * (block.length - size))
      writes.push(writeFile(join(dir, `f${f}`), block.subarray(start, start + size), { mode: f % 7 === 0 ? 0o755 : 0o644 }))
      bytes += size
      files++
    }
    await Promise.all(writes)
  }
  return { bytes, files }
}

/**
 * Runs `argv` under /usr/bin/time; stdin from `stdinFile` through `cat` (a pipe, as from a
 * network peer) or nothing; stdout counted and dropped. Returns wall time, CPU time, peak RSS,
 * bytes out.
 */
async function measure (argv: string[], stdinFile?: string): Promise<Measured> {
  const rssFile = join(process.env.BENCH_TMP ?? '/tmp', `rss-${process.pid}-${Math.random().toString(36).slice(2)}`)
  const timed = [TIME, '-f', '%M %U %S', '-o', rssFile, ...argv].map(shellQuote).join(' ')
  const script = stdinFile != null ? `cat ${shellQuote(stdinFile)} | ${timed}` : `${timed} < /dev/null`
  const started = process.hrtime.bigint()
  const bytes = await new Promise<number>((resolve, reject) => {
    const child = spawn('bash', ['-o', 'pipefail', '-c', script], { env: nixEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
    let n = 0
    let err = ''
    child.stdout.on('data', (d: Buffer) => { n += d.length })
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    child.on('error', reject)
    child.on('close', code => {
      if (code === 0) resolve(n)
      else reject(new Error(`${argv.join(' ')} exited with ${code}: ${err.trim()}`))
    })
  })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  // The last line: earlier ones are /usr/bin/time's notes (e.g. "Command exited with ...").
  const [rssKiB = NaN, user = NaN, system = NaN] = ((await readFile(rssFile, 'utf8')).trim().split('\n').pop() ?? '').split(' ').map(Number)
  await rm(rssFile, { force: true })
  return { seconds, cpuSeconds: user + system, peakRssMiB: rssKiB / 1024, bytes }
}

function restorePlace (): string {
  if (process.env.BENCH_NAR_RESTORE_DIR != null) return process.env.BENCH_NAR_RESTORE_DIR
  return existsSync('/dev/shm') ? '/dev/shm' : '/tmp'
}

function shellQuote (s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]!
}

function row (op: string, tool: string, narBytes: number, runs: Measured[], baseline?: number): BenchRow {
  const seconds = median(runs.map(r => r.seconds))
  const mibps = narBytes / MiB / seconds
  return {
    op,
    tool,
    'NAR MiB': Math.round(narBytes / MiB),
    's (median)': Number(seconds.toFixed(3)),
    'MiB/s': Math.round(mibps),
    'ours/nix': baseline != null ? Number((mibps / baseline).toFixed(2)) : 1,
    'cpu s (median)': Number(median(runs.map(r => r.cpuSeconds)).toFixed(3)),
    'peak RSS MiB': Number(Math.max(...runs.map(r => r.peakRssMiB)).toFixed(1))
  }
}

function startupRow (tool: string, runs: Measured[]): BenchRow {
  return {
    op: 'startup',
    tool,
    'NAR MiB': 0,
    's (median)': Number(median(runs.map(r => r.seconds)).toFixed(3)),
    'MiB/s': '-',
    'ours/nix': '-',
    'cpu s (median)': Number(median(runs.map(r => r.cpuSeconds)).toFixed(3)),
    'peak RSS MiB': Number(Math.max(...runs.map(r => r.peakRssMiB)).toFixed(1))
  }
}

export async function run (): Promise<BenchRow[]> {
  if (!existsSync(TIME)) throw new Error(`${TIME} is needed to measure peak RSS (apt-get install time)`)
  const base = await mkdtemp('/tmp/meshbuild-bench-nar-')
  try {
    const tree = join(base, 'tree')
    const shape = await makeTree(tree)
    process.stderr.write(`nar bench: tree of ${shape.files} files, ${(shape.bytes / MiB).toFixed(0)} MiB in ${tree}; ${RUNS} runs each\n`)

    const narFile = join(base, 'tree.nar')
    await new Promise<void>((resolve, reject) => {
      const child = spawn('nix-store', ['--dump', tree], { env: nixEnv(), stdio: ['ignore', 'pipe', 'inherit'] })
      child.stdout.pipe(createWriteStream(narFile)).on('close', () => { resolve() }).on('error', reject)
      child.on('error', reject)
    })

    // Warm the page cache for the tree so neither tool pays for the first read.
    await measure(['nix-store', '--dump', tree])
    const dumpNix: Measured[] = []
    const dumpOurs: Measured[] = []
    for (let i = 0; i < RUNS; i++) {
      dumpNix.push(await measure(['nix-store', '--dump', tree]))
      dumpOurs.push(await measure([process.execPath, MESHBUILD, 'nar', 'dump-path', tree]))
    }
    const narBytes = dumpNix[0]!.bytes
    for (const r of dumpOurs) if (r.bytes !== narBytes) throw new Error(`our NAR has ${r.bytes} bytes, nix-store's ${narBytes}`)

    const restoreBase = await mkdtemp(join(restorePlace(), 'meshbuild-bench-restore-'))
    const restoreNix: Measured[] = []
    const restoreOurs: Measured[] = []
    try {
      for (let i = 0; i < RUNS; i++) {
        const a = join(restoreBase, `nix-${i}`)
        restoreNix.push(await measure(['nix-store', '--restore', a], narFile))
        await rm(a, { recursive: true, force: true })
        const b = join(restoreBase, `ours-${i}`)
        restoreOurs.push(await measure([process.execPath, MESHBUILD, 'nar', 'restore', b], narFile))
        await rm(b, { recursive: true, force: true })
      }
    } finally {
      await rm(restoreBase, { recursive: true, force: true })
    }
    const startup: Measured[] = []
    const bareNode: Measured[] = []
    for (let i = 0; i < RUNS; i++) {
      startup.push(await measure([process.execPath, MESHBUILD, '--help']))
      bareNode.push(await measure([process.execPath, '-e', '0']))
    }

    const dumpRate = narBytes / MiB / median(dumpNix.map(r => r.seconds))
    const restoreRate = narBytes / MiB / median(restoreNix.map(r => r.seconds))
    return [
      row('dump', 'nix-store --dump', narBytes, dumpNix),
      row('dump', 'meshbuild nar dump-path', narBytes, dumpOurs, dumpRate),
      row('restore', 'nix-store --restore', narBytes, restoreNix),
      row('restore', 'meshbuild nar restore', narBytes, restoreOurs, restoreRate),
      startupRow('meshbuild --help', startup),
      startupRow('node -e 0', bareNode)
    ]
  } finally {
    await rm(base, { recursive: true, force: true })
  }
}

// Run alone: `node bench/nar.ts`.
if (import.meta.url === `file://${process.argv[1]}`) console.table(await run())
