// The shared binary cache: how fast the real Nix substitutes from it over HTTP, against how fast
// the same NAR file reads from disk, for each compression, in one run on one store path:
//   add:       the NAR file (dumped once by nix-store --dump) streamed into BinaryCache.add
//   curl:      `curl -o /dev/null` of the NAR file from the cache server (HTTP alone)
//   nix copy:  `nix copy --from http://127.0.0.1:PORT --to ROOT PATH` into a fresh store root
//   read:      `cat FILE > /dev/null` (page cache warm: the file was just written) and
//              `dd iflag=direct bs=4M` (O_DIRECT: the disk itself, no cache dropped)
// The payload is a real store path built from files of this machine (a large shared library and
// a Python standard library: binary and text), ~162 MiB of NAR. Median of RUNS runs.
// With BENCH_CACHE_LEVELS=1, rows follow for each level of each method alone: the NAR file piped
// through compressor() into a byte counter, single-threaded (what the Compression decision used).
import { cacheNarinfo } from '../node/signer/signer.ts'
import { spawn } from 'node:child_process'
import { createReadStream, existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { join } from 'node:path'
import { BinaryCache } from '../node/cache/binary-cache.ts'
import { startCacheServer } from '../node/cache/cache-server.ts'
import { compressor, type CompressionName } from '../node/cache/compression.ts'
import { execText } from '../node/nix/exec.ts'
import { nixEnv } from '../node/nix/nix-config.ts'
import type { NarInfo } from '../protocols/nix/narinfo.ts'
import { formatPublicKey, generateKeyPair } from '../protocols/nix/signing-key.ts'
import type { BenchRow } from './run.ts'

const MiB = 1024 * 1024
const RUNS = Number(process.env.BENCH_CACHE_RUNS ?? 3)
const COMPRESSIONS: CompressionName[] = ['zstd', 'br', 'none']
/** What the payload path holds; BENCH_CACHE_SOURCES (colon-separated) overrides. */
const LEVELS: Array<{ compression: CompressionName, level: number }> = [
  ...[1, 3, 6, 9].map(level => ({ compression: 'zstd' as const, level })),
  ...[1, 2, 4, 6].map(level => ({ compression: 'br' as const, level }))
]
const SOURCES = (process.env.BENCH_CACHE_SOURCES ?? '/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1:/usr/lib/python3.11').split(':')

/** Runs a shell command, returns its wall time in seconds; throws on a non-zero exit. */
async function timed (script: string, env: NodeJS.ProcessEnv = nixEnv()): Promise<number> {
  const started = process.hrtime.bigint()
  await new Promise<void>((resolve, reject) => {
    const child = spawn('bash', ['-o', 'pipefail', '-c', script], { env, stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    child.on('error', reject)
    child.on('close', code => {
      if (code === 0) resolve()
      else reject(new Error(`${script} exited with ${code}: ${err.trim()}`))
    })
  })
  return Number(process.hrtime.bigint() - started) / 1e9
}

function q (s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] ?? NaN
}

/** The payload store path, built once per machine (a fixed name, so later runs reuse it). */
async function payload (base: string): Promise<string> {
  const present = SOURCES.filter(s => existsSync(s))
  if (present.length === 0) throw new Error(`none of ${SOURCES.join(', ')} exists; set BENCH_CACHE_SOURCES`)
  const script = ['/bin/mkdir $out', ...present.map(s => `/bin/cp -r ${s} $out/`)].join('; ')
  const expr = `derivation { name = "meshbuild-bench-cache-payload"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ${JSON.stringify(script)} ]; }`
  const file = join(base, 'payload.nix')
  await writeFile(file, expr)
  const drv = (await execText('nix-instantiate', [file])).trim()
  return (await execText('nix-store', ['--realise', drv])).trim()
}

export async function run (): Promise<BenchRow[]> {
  const base = await mkdtemp(join(process.env.BENCH_TMP ?? '/tmp', 'meshbuild-bench-cache-'))
  // Store roots on tmpfs, so that Nix's unpacking is measured rather than the disk's write-back.
  const rootsIn = process.env.BENCH_CACHE_ROOT_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : base)
  const roots = await mkdtemp(join(rootsIn, 'meshbuild-bench-cache-roots-'))
  const rows: BenchRow[] = []
  try {
    const path = await payload(base)
    const [pi] = JSON.parse(await execText('nix', ['path-info', '--json', path])) as Array<{ narHash: string, narSize: number, references: string[], ca?: string }>
    if (pi === undefined) throw new Error(`no path info for ${path}`)
    const narFile = join(base, 'payload.nar')
    await timed(`nix-store --dump ${q(path)} > ${q(narFile)}`)
    const key = generateKeyPair('meshbuild-bench-cache-1')
    const info: NarInfo = cacheNarinfo({ ...pi, path }, key.secretKey)
    const narMiB = pi.narSize / MiB
    process.stderr.write(`cache bench: ${path}, NAR ${narMiB.toFixed(0)} MiB; store roots in ${rootsIn}; ${RUNS} runs each\n`)

    for (const compression of COMPRESSIONS) {
      const cache = await BinaryCache.open(join(base, `cache-${compression}`), { compression })
      const started = process.hrtime.bigint()
      const { info: stored } = await cache.add(info, createReadStream(narFile, { highWaterMark: MiB }))
      const addSeconds = Number(process.hrtime.bigint() - started) / 1e9
      const server = await startCacheServer(cache, { host: '127.0.0.1', port: 0 })
      try {
        const file = join(cache.dir, stored.url)
        const fileMiB = (stored.fileSize ?? 0) / MiB
        const curl: number[] = []
        const copy: number[] = []
        const cat: number[] = []
        const direct: number[] = []
        for (let i = 0; i < RUNS; i++) {
          curl.push(await timed(`curl -sf -o /dev/null ${q(`${server.url}/${stored.url}`)}`))
          const root = join(roots, `${compression}-${i}`)
          const env = { ...nixEnv({ trustedPublicKeys: [formatPublicKey(key.publicKey)] }), XDG_CACHE_HOME: join(base, `xdg-${compression}-${i}`) }
          copy.push(await timed(`nix copy --from ${q(server.url)} --to ${q(root)} ${q(path)}`, env))
          await rm(root, { recursive: true, force: true })
          cat.push(await timed(`cat ${q(file)} > /dev/null`))
          direct.push(await timed(`dd if=${q(file)} of=/dev/null bs=4M iflag=direct status=none`))
        }
        const rate = (mib: number, s: number): number => Math.round(mib / s)
        const copyS = median(copy)
        rows.push({
          compression,
          'NAR MiB': Math.round(narMiB),
          'file MiB': Math.round(fileMiB),
          'file/NAR': Number((fileMiB / narMiB).toFixed(3)),
          'add NAR MiB/s': rate(narMiB, addSeconds),
          'curl file MiB/s': rate(fileMiB, median(curl)),
          'nix copy s': Number(copyS.toFixed(2)),
          'nix copy NAR MiB/s': rate(narMiB, copyS),
          'nix copy file MiB/s': rate(fileMiB, copyS),
          'read warm file MiB/s': rate(fileMiB, median(cat)),
          'read O_DIRECT file MiB/s': rate(fileMiB, median(direct)),
          // The same bytes both ways: the file as Nix downloads it, the file as the disk reads it.
          'nix copy / O_DIRECT': Number((median(direct) / copyS).toFixed(2))
        })
      } finally {
        await server.close()
        await cache.close()
      }
    }
    if (process.env.BENCH_CACHE_LEVELS === '1') {
      for (const { compression, level } of LEVELS) {
        let out = 0
        const started = process.hrtime.bigint()
        await pipeline(createReadStream(narFile, { highWaterMark: MiB }), compressor(compression, { level, sizeHint: pi.narSize }), new Writable({
          write (chunk: Buffer, _encoding, callback) { out += chunk.length; callback() }
        }))
        const seconds = Number(process.hrtime.bigint() - started) / 1e9
        rows.push({
          compression: `${compression} ${level}`,
          'NAR MiB': Math.round(narMiB),
          'file MiB': Math.round(out / MiB),
          'file/NAR': Number((out / pi.narSize).toFixed(3)),
          'add NAR MiB/s': Math.round(narMiB / seconds)
        })
      }
    }
    return rows
  } finally {
    await rm(roots, { recursive: true, force: true })
    await rm(base, { recursive: true, force: true })
  }
}

// Run alone: `node bench/cache.ts`.
if (import.meta.url === `file://${process.argv[1]}`) console.table(await run())
