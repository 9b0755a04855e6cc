// Signing throughput: how fast the signing node takes a worker's outputs into the shared cache,
// against the raw NAR stream between the same two hosts, in one run. Two test hosts
// (test/helpers/test-hosts.ts): W, a worker (`--max-jobs 4`), and S, the signer.
//
// For each cache compression (zstd, the default, then none) and each set of outputs:
//   small: SMALL_COUNT derivations writing 1–10 KiB of random bytes;
//   big:   BIG_COUNT derivations writing BIG_MIB MiB of random bytes;
// 1. the set is built on W (`meshbuild submit`) while no signer runs, so every output waits in W's
//    sign queue;
// 2. raw: a bare libp2p peer in S's host (this file run as `pull`: MeshNetwork + pullNars, no
//    node) streams the same NARs from W's node over the nar protocol and drops them — the NAR
//    stream rate, W's per-path store work included; in the first round it also fetchClosure's
//    them into S's host store (`nix-store --import` per path);
// 3. signer: S is started (`join --signer --cache-compression C`); W offers its whole queue at once;
//    timed from S's `offers N path(s)` log line to its last `cached …` line (and from S's spawn);
//    done when S's `status --json` shows every path in the cache;
// 4. S's side alone: the same NARs, dumped to files, added to a BinaryCache in this process on the
//    same disk as S's cache (compression, hashing, fsync, LevelDB), no network, no worker;
// and W's per-path store commands timed alone in W's host (what the nar protocol runs per path).
// BENCH_SIGNER_SMALL, BENCH_SIGNER_BIG_MIB size the sets; BENCH_SIGNER_LOGS=DIR keeps node logs.
import { cacheNarinfo } from '../node/signer/signer.ts'
import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateKeyPair as generatePeerKey } from '@libp2p/crypto/keys'
import { TestNetwork, type TestHost } from '../test/helpers/test-hosts.ts'
import { MESHBUILD_BIN, instantiateIn, meshSecretFile, startNode, status, stopNode, type MeshNodeHandle } from '../test/helpers/mesh-hosts.ts'
import { waitFor } from '../test/helpers/wait.ts'
import { execText } from '../node/nix/exec.ts'
import { openLocalStore } from '../node/nix/local-store.ts'
import { MeshNetwork } from '../node/mesh/network.ts'
import { fetchClosure, pullNars } from '../node/mesh/store-transfer.ts'
import { BinaryCache } from '../node/cache/binary-cache.ts'
import type { CompressionName } from '../node/cache/compression.ts'
import { createLogger } from '../node/log.ts'
import { readMeshSecretFile } from '../node/cli/mesh-secret.ts'
import { generateKeyPair } from '../protocols/nix/signing-key.ts'
import type { SubmissionReport } from '../node/mesh/reports.ts'
import type { BenchRow } from './run.ts'

const MiB = 1024 * 1024
const SMALL_COUNT = Number(process.env.BENCH_SIGNER_SMALL ?? 300)
const BIG_COUNT = 3
const BIG_MIB = Number(process.env.BENCH_SIGNER_BIG_MIB ?? 150)
const COMPRESSIONS: CompressionName[] = ['zstd', 'none']
const BUILD_TIMEOUT_MS = 900_000
const SIGN_TIMEOUT_MS = 900_000
const PULL_TIMEOUT_MS = 900_000
const CONNECT_TIMEOUT_MS = 20_000
/** Paths whose store commands are timed one by one on W. */
const PER_PATH_SAMPLES = 10
const THIS_FILE = fileURLToPath(import.meta.url)
const CLI = process.env.BENCH_SIGNER_CLI ?? MESHBUILD_BIN

interface OutputSet {
  kind: 'small' | 'big'
  paths: string[]
  narBytes: number
  infos: PathInfoJson[]
}

interface PathInfoJson { path: string, narHash: string, narSize: number, references: string[], ca?: string }

/** What the `pull` mode prints: seconds from the first request to the last byte. */
interface PullResult { seconds: number, bytes: number, paths: number }

// --- derivations ----------------------------------------------------------------------------

function setExpr (kind: 'small' | 'big', tag: string): string {
  // small: 1–10 KiB by index; big: BIG_MIB MiB each. Random bytes: zstd cannot shrink them, so
  // the compressor's time is its cost on data that does not compress.
  const size = kind === 'small' ? '$((1024 * (1 + i % 10)))' : String(BIG_MIB * MiB)
  const count = kind === 'small' ? SMALL_COUNT : BIG_COUNT
  return `
let mk = i: derivation {
  name = "bench-signer-${kind}-\${toString i}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "i=\${toString i}; : ${tag}; /usr/bin/head -c ${size} /dev/urandom > $out" ];
};
in { all = builtins.genList mk ${count}; }`
}

async function buildSet (net: TestNetwork, w: MeshNodeHandle, kind: 'small' | 'big'): Promise<OutputSet> {
  const drvs = await instantiateIn(net, w.host, setExpr(kind, randomBytes(6).toString('hex')), ['all'])
  const started = performance.now()
  const r = await w.host.exec(process.execPath, [CLI, 'submit', '-', '--json', '--data-dir', w.dataDir], {
    input: drvs.join('\n') + '\n', timeoutMs: BUILD_TIMEOUT_MS
  })
  if (r.code !== 0) throw new Error(`submit of the ${kind} set on W exited with ${r.code}: ${r.stderr}`)
  const report = JSON.parse(r.stdout) as { results: SubmissionReport['results'] }
  const paths = report.results.flatMap(x => Object.values(x.outputs))
  if (paths.length !== drvs.length) throw new Error(`${kind} set: ${drvs.length} derivations gave ${paths.length} outputs`)
  const infos = JSON.parse(await w.host.execText('nix', ['path-info', '--json', ...paths])) as PathInfoJson[]
  const narBytes = infos.reduce((a, i) => a + i.narSize, 0)
  process.stderr.write(`signer bench: built ${paths.length} ${kind} outputs (${(narBytes / MiB).toFixed(1)} MiB of NAR) on W in ${((performance.now() - started) / 1000).toFixed(1)} s\n`)
  await waitFor(async () => (await status(w)).signQueue >= paths.length, 30_000, `W's sign queue to hold the ${kind} outputs`, 500)
  return { kind, paths, narBytes, infos }
}

// --- raw NAR stream: this file run in S's host as a bare libp2p peer --------------------------

/** `node bench/signer.ts pull discard|import PEER ADDR LISTFILE SECRETFILE`: prints a PullResult as JSON. */
async function pullMain (args: string[]): Promise<void> {
  const [mode, peer, addr, listFile, secretFile] = args
  if ((mode !== 'discard' && mode !== 'import') || peer === undefined || addr === undefined || listFile === undefined || secretFile === undefined) {
    throw new Error('usage: signer.ts pull discard|import PEER ADDR LISTFILE SECRETFILE')
  }
  const paths = (await readFile(listFile, 'utf8')).split('\n').filter(l => l !== '')
  const secret = await readMeshSecretFile(secretFile)
  const network = new MeshNetwork({
    privateKey: await generatePeerKey('Ed25519'),
    listen: ['/ip4/0.0.0.0/tcp/0'],
    meshSecret: secret,
    bootstrap: [`${addr}/p2p/${peer}`],
    mdns: false,
    log: createLogger('bench-pull', 'warn')
  })
  await network.start()
  try {
    await waitFor(() => network.connectedPeers().includes(peer), CONNECT_TIMEOUT_MS, `a connection to ${peer}`, 20)
    const started = performance.now()
    let bytes = 0
    if (mode === 'discard') {
      await pullNars(network, peer, paths, async (_info, nar) => {
        for await (const chunk of nar) bytes += chunk.byteLength
      })
    } else {
      // The store backend a node uses (the daemon's protocol), so the row compares like with like.
      const store = openLocalStore()
      try {
        bytes = (await fetchClosure(network, store, peer, paths)).bytes
      } finally {
        store.close()
      }
    }
    const result: PullResult = { seconds: (performance.now() - started) / 1000, bytes, paths: paths.length }
    process.stdout.write(JSON.stringify(result) + '\n')
  } finally {
    await network.stop()
  }
}

async function rawPull (net: TestNetwork, s: TestHost, w: MeshNodeHandle, set: OutputSet, mode: 'discard' | 'import'): Promise<PullResult> {
  const self = (await status(w)).self
  const addr = self.addresses.map(a => a.replace(/\/p2p\/.*$/, '')).find(a => a.startsWith(`/ip4/${w.host.address}/tcp/`))
  if (addr === undefined) throw new Error(`W announces no address on ${w.host.address}: ${self.addresses.join(', ')}`)
  const list = join(net.sharedDir, `pull-${randomBytes(4).toString('hex')}.list`)
  await writeFile(list, set.paths.join('\n') + '\n')
  const r = await s.exec(process.execPath, [THIS_FILE, 'pull', mode, w.peerId, addr, list, await meshSecretFile(net)], { timeoutMs: PULL_TIMEOUT_MS })
  if (r.code !== 0) throw new Error(`raw ${mode} pull in S's host exited with ${r.code}: ${r.stderr}`)
  const result = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '') as PullResult
  if (result.bytes !== set.narBytes) throw new Error(`raw ${mode} pull moved ${result.bytes} bytes, expected ${set.narBytes}`)
  return result
}

// --- the signer -------------------------------------------------------------------------------

/** A line a node wrote: `2026-11-23T04:40:00.000Z INFO  [meshbuild:signer] message`. */
interface LogLine { at: number, msg: string }
const LOG_LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) \w+\s+\[[^\]]*\] (.*)$/

async function logLines (file: string, since: number): Promise<LogLine[]> {
  const text = await readFile(file, 'utf8')
  const lines: LogLine[] = []
  for (const l of text.split('\n')) {
    const m = LOG_LINE.exec(l)
    if (m == null) continue
    const at = Date.parse(m[1] ?? '')
    if (at >= since) lines.push({ at, msg: m[2] ?? '' })
  }
  return lines
}

interface SignRun {
  /** S spawned → its last `cached` line. */
  fromSpawn: number
  /** S's first `offers N path(s)` → its last `cached` line. */
  fromOffer: number
  /** First → last `cached` line. */
  cachedSpan: number
  offers: number[]
  fileBytes: number
  /** CPU seconds from S's spawn to the end: S's node; W's node with the nix-store processes it ran. */
  cpuS: number
  cpuW: number
}

const CLOCK_TICKS = 100

/** utime + stime of a process (with its waited-for children when asked), in seconds. */
async function cpuSeconds (pid: number | undefined, children: boolean): Promise<number> {
  if (pid === undefined) return NaN
  const text = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  // Fields after the command name, which is in parentheses and may hold spaces.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ').map(Number)
  const [utime, stime, cutime, cstime] = [f[11], f[12], f[13], f[14]]
  if (utime === undefined || stime === undefined || cutime === undefined || cstime === undefined) return NaN
  return (utime + stime + (children ? cutime + cstime : 0)) / CLOCK_TICKS
}

async function signSet (net: TestNetwork, s: TestHost, w: MeshNodeHandle, set: OutputSet, compression: CompressionName, cacheKey: string, expectedInCache: number): Promise<SignRun> {
  const cacheDir = join(net.sharedDir, `cache-${compression}`)
  // W's key named in a file: the signer trusts only --trusted-keys and its own key.
  const trusted = join(net.sharedDir, 'trusted-keys')
  await writeFile(trusted, `${(await status(w)).self.signingKey ?? ''}\n`)
  const cpuW0 = await cpuSeconds(w.child.pid, true)
  const spawnedAt = Date.now()
  const signer = await startNode(net, s, {
    args: ['--max-jobs', '1', '--signer', '--cache-key', cacheKey, '--trusted-keys', trusted, '--cache-dir', cacheDir, '--cache-compression', compression],
    dataDir: join(net.sharedDir, 'signer')
  })
  let cpu = { s: NaN, w: NaN }
  try {
    await waitFor(async () => {
      const st = (await status(signer)).signer
      const refused = st?.rejections?.[0]
      if (refused !== undefined) throw new Error(`S refused ${refused.path}: ${refused.reason}`)
      return (st?.paths ?? 0) >= expectedInCache
    }, SIGN_TIMEOUT_MS, `S to cache the ${set.kind} set`, 250)
    cpu = { s: await cpuSeconds(signer.child.pid, false), w: await cpuSeconds(w.child.pid, true) - cpuW0 }
  } finally {
    await stopNode(signer)
  }
  const lines = await logLines(signer.logFile, spawnedAt)
  const refused = lines.filter(l => /^refused /.test(l.msg))
  if (refused.length > 0) throw new Error(`S refused ${refused.length} path(s): ${refused[0]?.msg ?? ''}`)
  const wanted = new Set(set.paths)
  const offers = lines.filter(l => / offers \d+ path\(s\)$/.test(l.msg))
  const cached = lines.filter(l => { const m = /^cached (\S+) from /.exec(l.msg); return m?.[1] !== undefined && wanted.has(m[1]) })
  const first = offers[0]
  const last = cached.at(-1)
  if (first === undefined || last === undefined || cached.length !== set.paths.length) {
    throw new Error(`S's log: ${offers.length} offers, ${cached.length} of ${set.paths.length} cached; see ${signer.logFile}`)
  }
  let fileBytes = 0
  for (const name of await readdir(join(cacheDir, 'nar'))) fileBytes += (await stat(join(cacheDir, 'nar', name))).size
  return {
    fromSpawn: (last.at - spawnedAt) / 1000,
    fromOffer: (last.at - first.at) / 1000,
    cachedSpan: (last.at - (cached[0]?.at ?? last.at)) / 1000,
    offers: offers.map(o => Number(/offers (\d+)/.exec(o.msg)?.[1])),
    fileBytes,
    cpuS: cpu.s,
    cpuW: cpu.w
  }
}

// --- the two sides alone ----------------------------------------------------------------------

/** S's work without the network: the set's NARs, dumped to files, added to a cache in this process. */
async function cacheAlone (net: TestNetwork, w: TestHost, set: OutputSet, compression: CompressionName): Promise<number> {
  const dir = join(net.sharedDir, `nars-${set.kind}`)
  await mkdir(dir, { recursive: true })
  const file = (p: string): string => join(dir, `${p.slice('/nix/store/'.length, '/nix/store/'.length + 32)}.nar`)
  // One shell for all dumps: the files are made once per set and reused for every compression.
  const missing: string[] = []
  for (const p of set.paths) if (!(await stat(file(p)).then(() => true, () => false))) missing.push(p)
  if (missing.length > 0) {
    const script = missing.map(p => `nix-store --dump '${p}' > '${file(p)}'`).join('\n')
    await w.execText('/bin/sh', ['-ec', script], { timeoutMs: PULL_TIMEOUT_MS })
  }
  const key = generateKeyPair('bench-signer-alone-1')
  const cache = await BinaryCache.open(join(net.sharedDir, `alone-${set.kind}-${compression}`), { compression })
  try {
    const started = performance.now()
    for (const pi of set.infos) {
      const info = cacheNarinfo(pi, key.secretKey)
      await cache.add(info, createReadStream(file(pi.path), { highWaterMark: MiB }))
    }
    return (performance.now() - started) / 1000
  } finally {
    await cache.close()
  }
}

/** Median ms per path of each store command the nar protocol runs for one path on W. */
async function workerPerPath (w: TestHost, set: OutputSet): Promise<Record<string, number>> {
  const sample = set.paths.slice(0, PER_PATH_SAMPLES)
  const commands: Record<string, (p: string) => string> = {
    'nix path-info --json --sigs': p => `nix path-info --json --sigs '${p}' > /dev/null`,
    'nix-store --check-validity': p => `nix-store --check-validity --print-invalid '${p}'`,
    'nix-store --dump': p => `nix-store --dump '${p}' > /dev/null`
  }
  const result: Record<string, number> = {}
  for (const [name, cmd] of Object.entries(commands)) {
    const times: number[] = []
    for (const p of sample) {
      const t = performance.now()
      await w.execText('/bin/sh', ['-ec', cmd(p)])
      times.push(performance.now() - t)
    }
    result[name] = median(times)
  }
  return result
}

// --- the run --------------------------------------------------------------------------------

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] ?? NaN
}

function round (x: number, digits = 2): number {
  return Number(x.toFixed(digits))
}

const COLUMNS = ['set', 'measure', 'paths', 'NAR MiB', 's', 'paths/s', 'NAR MiB/s', 'vs raw', 'note']

function row (set: OutputSet, measure: string, seconds: number, raw: number | undefined, note = ''): BenchRow {
  const mibs = set.narBytes / MiB / seconds
  return {
    set: set.kind,
    measure,
    paths: set.paths.length,
    'NAR MiB': round(set.narBytes / MiB, 1),
    s: round(seconds, 3),
    'paths/s': round(set.paths.length / seconds, 1),
    'NAR MiB/s': round(mibs, 1),
    'vs raw': raw === undefined ? '' : round(mibs / (set.narBytes / MiB / raw)),
    note
  }
}

export async function run (): Promise<BenchRow[]> {
  process.stderr.write(`signer bench: ${SMALL_COUNT} small outputs, ${BIG_COUNT} × ${BIG_MIB} MiB; nodes run ${CLI}\n`)
  const rows: BenchRow[] = []
  const net = await TestNetwork.create({ hosts: 2 })
  let w: MeshNodeHandle | undefined
  try {
    if (process.env.BENCH_SIGNER_LOGS !== undefined) process.env.MESHBUILD_TEST_LOGS = process.env.BENCH_SIGNER_LOGS
    const [hW, hS] = [net.host(0), net.host(1)]
    const cacheKey = join(net.sharedDir, 'cache.sec')
    await execText(process.execPath, [MESHBUILD_BIN, 'key', 'generate', 'bench-cache-1', '--secret-file', cacheKey, '--public-file', `${cacheKey}.pub`])
    // W offers to S only because S's cache key is configured on W (a file holding it).
    w = await startNode(net, hW, { args: ['--max-jobs', '4', '--cache-public-key', `${cacheKey}.pub`] })
    let firstRound = true
    for (const compression of COMPRESSIONS) {
      // Each compression has its own cache directory: counts and file sizes add up per round.
      let inCache = 0
      let fileBytesBefore = 0
      for (const kind of ['small', 'big'] as const) {
        const set = await buildSet(net, w, kind)
        const raw = await rawPull(net, hS, w, set, 'discard')
        rows.push(row(set, 'raw: nar protocol, NARs dropped (pullNars)', raw.seconds, raw.seconds, `W → bare peer in S's host; before S (${compression} round)`))
        if (firstRound) {
          const imported = await rawPull(net, hS, w, set, 'import')
          rows.push(row(set, 'raw: into S\'s Nix store (fetchClosure)', imported.seconds, raw.seconds, 'AddToStoreNar per path, over the daemon'))
        }
        inCache += set.paths.length
        const signed = await signSet(net, hS, w, set, compression, cacheKey, inCache)
        const fileRatio = round((signed.fileBytes - fileBytesBefore) / set.narBytes, 3)
        fileBytesBefore = signed.fileBytes
        rows.push(row(set, `signer ${compression}: offer → last cached`, signed.fromOffer, raw.seconds,
          `offers ${signed.offers.join('+')}; first→last cached ${signed.cachedSpan.toFixed(2)} s; file/NAR ${fileRatio}`))
        rows.push(row(set, `signer ${compression}: S spawn → last cached`, signed.fromSpawn, raw.seconds,
          `incl. start, mDNS, beacon, W's 3 s offer timer; CPU s: S ${signed.cpuS.toFixed(1)}, W+nix ${signed.cpuW.toFixed(1)}`))
        const alone = await cacheAlone(net, hW, set, compression)
        rows.push(row(set, `S's side alone: BinaryCache.add ${compression}`, alone, raw.seconds, 'NARs from files, same disk, one process'))
        if (firstRound) {
          const per = await workerPerPath(hW, set)
          for (const [name, ms] of Object.entries(per)) {
            rows.push({ set: kind, measure: `W per path: ${name}`, note: `${ms.toFixed(1)} ms median of ${PER_PATH_SAMPLES}` })
          }
        }
        process.stderr.write(`signer bench: ${compression} ${kind} done\n`)
      }
      firstRound = false
    }
  } finally {
    if (w !== undefined) await stopNode(w).catch(() => {})
    await net.destroy()
  }
  return rows.map(r => Object.fromEntries(COLUMNS.map(c => [c, r[c] ?? ''])))
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (process.argv[2] === 'pull') await pullMain(process.argv.slice(3))
  else console.table(await run())
}
