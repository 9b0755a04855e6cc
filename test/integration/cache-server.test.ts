// The shared cache served over HTTP, with the real Nix as the client: real store paths (with
// references, a self-reference, a few MiB of random data) are dumped, signed with a fresh key,
// added in closure order and served on 127.0.0.1; Nix then substitutes every one of them into
// fresh store roots and verifies them itself, and refuses them under another trusted key. The
// HTTP surface is checked with raw requests: types, 404s, 405s, HEAD, traversal attempts, and
// a client that stops reading.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { BinaryCache } from '../../node/cache/binary-cache.ts'
import { startCacheServer, type CacheServer } from '../../node/cache/cache-server.ts'
import { exec, type ExecResult } from '../../node/nix/exec.ts'
import { nixEnv } from '../../node/nix/nix-config.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { formatNarinfo, type NarInfo } from '../../protocols/nix/narinfo.ts'
import { signNarinfo } from '../../protocols/nix/signature.ts'
import { formatPublicKey, generateKeyPair } from '../../protocols/nix/signing-key.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'

const TEST_TIMEOUT = 180_000
const CMD_TIMEOUT_MS = 120_000
const tag = randomBytes(6).toString('hex')

// top -> big -> leaf, top -> leaf (a symlink), top -> top (its own path in a file).
const expr = `let
  leaf = ${shDrv(`leaf-${tag}`, `echo leaf-${tag} > $out`)};
  big = ${shDrv(`big-${tag}`, [
    '/bin/mkdir $out',
    '/usr/bin/head -c 3145728 /dev/urandom > $out/random',
    '/usr/bin/seq 1 300000 > $out/text',
    'echo ${leaf} > $out/leaf'
  ].join('; '))};
  top = ${shDrv(`top-${tag}`, [
    '/bin/mkdir $out',
    'echo ${big} > $out/big',
    'echo $out > $out/self',
    '/bin/ln -s ${leaf} $out/link'
  ].join('; '))};
in { inherit top; }`

let dir: string
let cleanup: () => Promise<void>
let cache: BinaryCache
let server: CacheServer
/** The closure of top, references first. */
let closure: string[]
let top: string
const cacheKey = generateKeyPair(`mesh-cache-${tag}-1`)
const otherKey = generateKeyPair(`mesh-cache-${tag}-1`) // same name, other key: only the key differs
const published = new Map<string, NarInfo>()

interface NixPathInfo { path: string, narHash: string, narSize: number, references: string[], deriver?: string, ca?: string }

/** A Nix command with a narinfo disk cache of its own, so no answer carries over between runs. */
async function nixRun (cmd: string, args: string[], settings: { substituters?: string[], trustedPublicKeys?: string[] } = {}): Promise<ExecResult> {
  const env = { ...nixEnv(settings), XDG_CACHE_HOME: join(dir, `xdg-${randomBytes(4).toString('hex')}`) }
  return await exec(cmd, args, { env, signal: AbortSignal.timeout(CMD_TIMEOUT_MS) })
}

function ok (r: ExecResult, what: string): string {
  assert.equal(r.code, 0, `${what} exited ${r.code}: ${r.stderr}`)
  return r.stdout.toString('utf8')
}

/** Streams `nix-store --dump path` into the cache. */
async function addFromStore (info: NarInfo): Promise<void> {
  const child = spawn('nix-store', ['--dump', info.storePath], { env: nixEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  child.stderr.on('data', (d: Buffer) => { err += d.toString() })
  const exited = new Promise<number | null>(resolve => child.on('close', code => { resolve(code) }))
  const { added, info: stored } = await cache.add(info, child.stdout, { signal: AbortSignal.timeout(CMD_TIMEOUT_MS) })
  assert.equal(await exited, 0, `nix-store --dump ${info.storePath}: ${err}`)
  assert.equal(added, true)
  published.set(info.storePath, stored)
}

/** One raw HTTP/1.1 request, exactly as written (no client-side normalisation of the target). */
async function raw (method: string, target: string): Promise<{ status: number, headers: Record<string, string>, body: Buffer }> {
  return await new Promise((resolve, reject) => {
    const sock = connect(server.port, '127.0.0.1')
    const chunks: Buffer[] = []
    sock.setTimeout(10_000, () => { sock.destroy(new Error(`no answer to ${method} ${target}`)) })
    sock.on('data', d => chunks.push(d))
    sock.on('error', reject)
    sock.on('end', () => {
      const all = Buffer.concat(chunks)
      const split = all.indexOf('\r\n\r\n')
      const head = all.subarray(0, split).toString('latin1').split('\r\n')
      const status = Number(head[0]?.split(' ')[1])
      const headers: Record<string, string> = {}
      for (const line of head.slice(1)) {
        const c = line.indexOf(':')
        headers[line.slice(0, c).toLowerCase()] = line.slice(c + 1).trim()
      }
      resolve({ status, headers, body: all.subarray(split + 4) })
    })
    sock.write(`${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n${method === 'PUT' || method === 'POST' ? 'Content-Length: 5\r\n\r\nhello' : '\r\n'}`)
  })
}

before(async () => {
  ({ dir, cleanup } = await tempDir('meshbuild-cache-server-'))
  const [drv] = await instantiate(expr, dir, ['top'])
  top = (await nix('nix-store', '--realise', drv ?? '')).trim()
  const infos = JSON.parse(await nix('nix', 'path-info', '--json', '--recursive', top)) as NixPathInfo[]
  // Closure order: a path after all its references.
  closure = []
  const pending = new Map(infos.map(i => [i.path, i]))
  while (pending.size > 0) {
    for (const [path, i] of pending) {
      if (i.references.every(r => r === path || closure.includes(r))) {
        closure.push(path)
        pending.delete(path)
      }
    }
  }
  assert.equal(closure.length, 3)
  cache = await BinaryCache.open(join(dir, 'cache'))
  for (const path of closure) {
    const i = infos.find(x => x.path === path) as NixPathInfo
    const info: NarInfo = {
      storePath: i.path,
      url: '',
      compression: 'none',
      narHash: Hash.parse(i.narHash),
      narSize: i.narSize,
      references: i.references.map(r => r.slice('/nix/store/'.length)),
      sigs: [],
      ...(i.deriver !== undefined ? { deriver: i.deriver.slice('/nix/store/'.length) } : {}),
      ...(i.ca !== undefined ? { ca: i.ca } : {})
    }
    await addFromStore(signNarinfo(info, cacheKey.secretKey))
  }
  server = await startCacheServer(cache, { host: '127.0.0.1', port: 0 })
})

after(async () => {
  await server?.close()
  await cache?.close()
  await cleanup()
})

describe('real Nix substituting from the HTTP cache', { timeout: TEST_TIMEOUT }, () => {
  const pub = (): string => formatPublicKey(cacheKey.publicKey)

  it('nix copy --from brings the whole closure into a fresh store, and nix store verify accepts it', async () => {
    const root = join(dir, 'root-copy')
    ok(await nixRun('nix', ['copy', '--from', server.url, '--to', root, '--trusted-public-keys', pub(), top]), 'nix copy --from')
    ok(await nixRun('nix', ['store', 'verify', '--store', root, '--trusted-public-keys', pub(), '--sigs-needed', '1', ...closure]), 'nix store verify')
    const copied = JSON.parse(ok(await nixRun('nix', ['path-info', '--store', root, '--json', '--sigs', ...closure]), 'path-info in root')) as Array<NixPathInfo & { signatures?: string[] }>
    const local = JSON.parse(await nix('nix', 'path-info', '--json', ...closure)) as NixPathInfo[]
    for (const l of local) {
      const c = copied.find(e => e.path === l.path)
      assert.ok(c != null, `${l.path} is in the new store`)
      assert.equal(c.narHash, l.narHash)
      assert.equal(c.narSize, l.narSize)
      assert.deepEqual(c.references, l.references)
      assert.deepEqual(c.signatures, published.get(l.path)?.sigs)
    }
    const big = closure.find(p => p.endsWith(`-big-${tag}`)) ?? ''
    assert.deepEqual(await readFile(join(root, big, 'random')), await readFile(join(big, 'random')))
    assert.equal(await readFile(join(root, top, 'self'), 'utf8'), `${top}\n`)
  })

  it('nix-store --realise of the output, with the cache as only substituter and its key as only trusted key', async () => {
    const root = join(dir, 'root-realise')
    const out = ok(await nixRun('nix-store', ['--store', root, '--realise', top], { substituters: [server.url], trustedPublicKeys: [pub()] }), 'nix-store --realise')
    assert.equal(out.trim(), top)
    const valid = await nixRun('nix-store', ['--store', root, '--check-validity', ...closure])
    assert.equal(valid.code, 0, valid.stderr)
    ok(await nixRun('nix', ['store', 'verify', '--store', root, '--trusted-public-keys', pub(), '--sigs-needed', '1', ...closure]), 'nix store verify')
  })

  it('is refused by Nix trusting another key of the same name', async () => {
    const root = join(dir, 'root-refused')
    const r = await nixRun('nix', ['copy', '--from', server.url, '--to', root, '--trusted-public-keys', formatPublicKey(otherKey.publicKey), top])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /lacks a valid signature/)
    const valid = await nixRun('nix-store', ['--store', root, '--check-validity', top])
    assert.notEqual(valid.code, 0, 'nothing was registered')
  })
})

describe('the HTTP surface', { timeout: TEST_TIMEOUT }, () => {
  const hp = (path: string): string => path.slice('/nix/store/'.length, '/nix/store/'.length + 32)
  const narName = (): string => (published.get(top)?.url ?? '').slice('nar/'.length)

  it('serves nix-cache-info, narinfos and NARs with Nix\'s types, and HEAD without a body', async () => {
    const info = await raw('GET', '/nix-cache-info')
    assert.equal(info.status, 200)
    assert.equal(info.headers['content-type'], 'text/x-nix-cache-info')
    assert.equal(info.body.toString(), 'StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n')

    const narinfo = await raw('GET', `/${hp(top)}.narinfo`)
    assert.equal(narinfo.status, 200)
    assert.equal(narinfo.headers['content-type'], 'text/x-nix-narinfo')
    assert.equal(narinfo.body.toString(), formatNarinfo(published.get(top) as NarInfo))

    const file = await readFile(join(cache.dir, 'nar', narName()))
    const nar = await raw('GET', `/nar/${narName()}`)
    assert.equal(nar.status, 200)
    assert.equal(nar.headers['content-type'], 'application/x-nix-nar')
    assert.equal(nar.headers['content-length'], String(file.length))
    assert.ok(nar.body.equals(file))

    for (const target of ['/nix-cache-info', `/${hp(top)}.narinfo`, `/nar/${narName()}`]) {
      const head = await raw('HEAD', target)
      assert.equal(head.status, 200, target)
      assert.ok(Number(head.headers['content-length']) > 0, target)
      assert.equal(head.body.length, 0, target)
    }
    const missing = await raw('HEAD', `/${'0'.repeat(32)}.narinfo`)
    assert.equal(missing.status, 404)
    assert.equal(missing.body.length, 0)
  })

  it('counts narinfo hits and misses', async () => {
    const before = cache.stats()
    assert.equal((await raw('GET', `/${hp(top)}.narinfo`)).status, 200)
    assert.equal((await raw('GET', `/${'1'.repeat(32)}.narinfo`)).status, 404)
    assert.equal((await raw('GET', `/${'2'.repeat(32)}.narinfo`)).status, 404)
    const s = cache.stats()
    assert.deepEqual([s.hits - before.hits, s.misses - before.misses], [1, 2])
    assert.equal(s.paths, 3)
  })

  const notFound: Array<{ target: string, why: string }> = [
    { target: `/${'3'.repeat(32)}.narinfo`, why: 'a path not in the cache' },
    { target: `/nar/${'4'.repeat(52)}.nar.zst`, why: 'a NAR not in the cache' },
    { target: '/nar/../nix-cache-info', why: 'dot-dot in the path' },
    { target: '/nar/..%2fnix-cache-info', why: 'an encoded slash' },
    { target: '/%2e%2e/', why: 'encoded dot-dot' },
    { target: '/%2e%2e/%2e%2e/etc/passwd', why: 'encoded traversal to /etc' },
    { target: '/../../etc/passwd', why: 'traversal to /etc' },
    { target: '/nar/', why: 'the NAR directory' },
    { target: '/index/LOCK', why: 'the index' },
    { target: '/index/CURRENT', why: 'the index' },
    { target: '/tmp/', why: 'the temporary directory' },
    { target: '//nix-cache-info', why: 'a doubled slash' },
    { target: '/nix-cache-info/', why: 'a trailing slash' },
    { target: '/', why: 'the root' },
    { target: '/nar/NAR.nar', why: 'a name outside nix32' }
  ]
  for (const c of notFound) {
    it(`answers 404 for ${c.why}: ${c.target}`, async () => {
      const r = await raw('GET', c.target)
      assert.equal(r.status, 404, `${c.target}: ${r.body.toString()}`)
      assert.doesNotMatch(r.body.toString(), /StoreDir|root:/)
    })
  }
  it('answers 404 for a narinfo name in upper case and for a NAR name with its hash part changed', async () => {
    assert.equal((await raw('GET', `/${hp(top).toUpperCase()}.narinfo`)).status, 404)
    assert.equal((await raw('GET', `/nar/${narName().replace(/^./, c => c === '0' ? '1' : '0')}`)).status, 404)
  })

  for (const method of ['PUT', 'POST', 'DELETE', 'PATCH', 'OPTIONS']) {
    it(`refuses ${method} with 405: nothing can be uploaded`, async () => {
      const target = method === 'PUT' ? `/${'5'.repeat(32)}.narinfo` : `/nar/${narName()}`
      const r = await raw(method, target)
      assert.equal(r.status, 405)
      assert.equal(r.headers.allow, 'GET, HEAD')
      assert.equal(await cache.narinfoText('5'.repeat(32)), undefined)
      assert.equal((await raw('GET', `/nar/${narName()}`)).status, 200)
    })
  }

  it('cuts off a client that stops reading a NAR', async () => {
    // A NAR far larger than the loopback socket buffers, in a cache of its own.
    const slowCache = await BinaryCache.open(join(dir, 'slow-cache'), { compression: 'none' })
    const slow = await startCacheServer(slowCache, { host: '127.0.0.1', port: 0, idleTimeoutMs: 500 })
    try {
      const nar = randomBytes(64 << 20)
      const info = signNarinfo({ storePath: `/nix/store/${hp(top).replace(/^./, c => c === '0' ? '1' : '0')}-slow`, url: '', compression: 'none', narHash: Hash.of('sha256', nar), narSize: nar.length, references: [], sigs: [] }, cacheKey.secretKey)
      const { info: stored } = await slowCache.add(info, [nar])
      const started = Date.now()
      const { received, after } = await new Promise<{ received: number, after: number }>((resolve, reject) => {
        const sock = connect(slow.port, '127.0.0.1')
        let received = 0
        sock.on('connect', () => {
          sock.write(`GET /${stored.url} HTTP/1.1\r\nHost: x\r\n\r\n`)
          sock.pause() // stop reading for longer than the server's idle timeout
          setTimeout(() => { sock.resume() }, 2000)
        })
        sock.on('data', d => { received += d.length })
        sock.on('error', () => {}) // a reset is one way of being cut off
        sock.on('close', () => { resolve({ received, after: Date.now() - started }) })
        setTimeout(() => { reject(new Error('the stalled connection was not closed within 15 s')) }, 15_000).unref()
      })
      assert.ok(received < nar.length, `the client got ${received} of ${nar.length} bytes before being cut off`)
      assert.ok(after >= 500, `closed after ${after} ms`)
      // The server itself is fine and serves the next client in full.
      const again = await fetch(`${slow.url}/${stored.url}`)
      assert.equal((await again.arrayBuffer()).byteLength, nar.length)
    } finally {
      await slow.close()
      await slowCache.close()
    }
  })
})
