// Slow clients against the HTTP cache, with the real Nix as the honest client: 300 connections
// that send nothing or half a request line, re-opened as soon as the server closes them (an
// attacker simply repeats), and meanwhile `nix copy --from` and `nix-store --realise` substitute
// from the cache within a generous bound. Before the connection pool, 256 such connections
// (Node's maxConnections) reset every new client until the 30 s connection check ran.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { BinaryCache } from '../../node/cache/binary-cache.ts'
import { startCacheServer, CACHE_MAX_CONNECTIONS_PER_ADDRESS, type CacheServer } from '../../node/cache/cache-server.ts'
import { exec, type ExecResult } from '../../node/nix/exec.ts'
import { nixEnv } from '../../node/nix/nix-config.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import type { NarInfo } from '../../protocols/nix/narinfo.ts'
import { signNarinfo } from '../../protocols/nix/signature.ts'
import { formatPublicKey, generateKeyPair } from '../../protocols/nix/signing-key.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'
import { waitFor } from '../helpers/wait.ts'

const SLOW_CLIENTS = 300
/** Generous: an unloaded run takes well under a second; the lock-out lasted ~24 s a round. */
const NIX_BOUND_MS = 60_000
const tag = randomBytes(6).toString('hex')

let dir: string
let cleanup: () => Promise<void>
let cache: BinaryCache
let server: CacheServer
let out: string
const key = generateKeyPair(`slow-clients-${tag}-1`)

async function nixRun (cmd: string, args: string[], settings: { substituters?: string[], trustedPublicKeys?: string[] } = {}): Promise<ExecResult> {
  const env = { ...nixEnv(settings), XDG_CACHE_HOME: join(dir, `xdg-${randomBytes(4).toString('hex')}`) }
  return await exec(cmd, args, { env, signal: AbortSignal.timeout(NIX_BOUND_MS) })
}

/** Keeps `n` slow connections open to the cache, opening a new one whenever one is closed. */
function slowClients (port: number, n: number): { opened: () => number, open: () => number, stop: () => void } {
  const sockets = new Set<Socket>()
  let opened = 0
  let stopped = false
  const one = (i: number): void => {
    if (stopped) return
    const s = connect(port, '127.0.0.1')
    opened++
    sockets.add(s)
    s.on('error', () => {})
    // Half of them send nothing; the others half a request line, then nothing more.
    if (i % 2 === 1) s.on('connect', () => { s.write('GET /nix-cache-info HT') })
    s.on('close', () => {
      sockets.delete(s)
      setTimeout(() => { one(i) }, 20)
    })
  }
  for (let i = 0; i < n; i++) one(i)
  return {
    opened: () => opened,
    open: () => [...sockets].filter(s => !s.connecting && !s.destroyed).length,
    stop: () => { stopped = true; for (const s of sockets) s.destroy() }
  }
}

before(async () => {
  ({ dir, cleanup } = await tempDir('meshbuild-slow-clients-'))
  const [drv] = await instantiate(`{ leaf = ${shDrv(`slow-${tag}`, `echo slow-${tag} > $out`)}; }`, dir, ['leaf'])
  out = (await nix('nix-store', '--realise', drv ?? '')).trim()
  const [i] = JSON.parse(await nix('nix', 'path-info', '--json', out)) as Array<{ narHash: string, narSize: number, deriver?: string }>
  assert.ok(i !== undefined)
  cache = await BinaryCache.open(join(dir, 'cache'))
  const info: NarInfo = {
    storePath: out, url: '', compression: 'none', narHash: Hash.parse(i.narHash), narSize: i.narSize, references: [], sigs: [],
    ...(i.deriver !== undefined ? { deriver: i.deriver.slice('/nix/store/'.length) } : {})
  }
  const child = spawn('nix-store', ['--dump', out], { env: nixEnv(), stdio: ['ignore', 'pipe', 'inherit'] })
  await cache.add(signNarinfo(info, key.secretKey), child.stdout, { signal: AbortSignal.timeout(60_000) })
  server = await startCacheServer(cache, { host: '127.0.0.1', port: 0 })
})

after(async () => {
  await server?.close()
  await cache?.close()
  await cleanup()
})

describe('the HTTP cache under 300 slow clients', { timeout: 300_000 }, () => {
  it('still serves real Nix: nix copy --from and nix-store --realise substitute the path', async () => {
    const attack = slowClients(server.port, SLOW_CLIENTS)
    try {
      await waitFor(() => attack.opened() >= SLOW_CLIENTS, 10_000, 'the slow clients to connect')
      // The attack is in place: the server holds a full per-address share of slow connections.
      await waitFor(() => server.connectionStats().open >= CACHE_MAX_CONNECTIONS_PER_ADDRESS, 10_000, 'the server to hold slow connections')
      const pub = formatPublicKey(key.publicKey)

      const copyRoot = join(dir, 'root-copy')
      const copy = await nixRun('nix', ['copy', '--from', server.url, '--to', copyRoot, '--trusted-public-keys', pub, out])
      assert.equal(copy.code, 0, `nix copy --from exited ${copy.code}: ${copy.stderr}`)
      assert.equal((await nixRun('nix-store', ['--store', copyRoot, '--check-validity', out])).code, 0)

      const realiseRoot = join(dir, 'root-realise')
      const realise = await nixRun('nix-store', ['--store', realiseRoot, '--realise', out], { substituters: [server.url], trustedPublicKeys: [pub] })
      assert.equal(realise.code, 0, `nix-store --realise exited ${realise.code}: ${realise.stderr}`)
      assert.equal(realise.stdout.toString().trim(), out)

      const stats = server.connectionStats()
      assert.ok(stats.evicted > 0, `no slow connection was closed to admit Nix: ${JSON.stringify(stats)}`)
      assert.ok(stats.open <= CACHE_MAX_CONNECTIONS_PER_ADDRESS + 8, `the server holds ${stats.open} connections from one address`)
    } finally {
      attack.stop()
    }
  })

  it('closes a connection that sends nothing, and one that sends half its headers, within the header timeout', async () => {
    const started = Date.now()
    const closed = await Promise.all([0, 1].map(async (i) => await new Promise<number>((resolve) => {
      const s = connect(server.port, '127.0.0.1')
      s.on('error', () => {})
      if (i === 1) s.on('connect', () => { s.write('GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n') })
      s.on('close', () => { resolve(Date.now() - started) })
      s.resume()
    })))
    // HTTP_HEADERS_TIMEOUT_MS (5 s, node/http/bounded-server.ts) plus a checking interval; generous for a loaded machine.
    for (const ms of closed) assert.ok(ms < 20_000, `a slow connection stayed ${ms} ms`)
  })
})
