// The shared cache's storage (node/cache/binary-cache.ts) on its own: what add() publishes and
// how, what it refuses (and that a refusal leaves no file), and that a crash at any point —
// simulated by hand, or a real kill -9 of a process adding — leaves a cache with no partial NAR
// and no narinfo without its NAR once open() has run.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { Writable } from 'node:stream'
import { createReadStream } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { BinaryCache, NIX_CACHE_INFO } from '../../node/cache/binary-cache.ts'
import { decompressor, parseCompression, type CompressionName } from '../../node/cache/compression.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { encodeNar } from '../../protocols/nix/nar-encoder.ts'
import { formatNarinfo, parseNarinfo, type NarInfo } from '../../protocols/nix/narinfo.ts'
import { encodeNix32 } from '../../protocols/nix/nix32.ts'
import { signNarinfo } from '../../protocols/nix/signature.ts'
import { generateKeyPair } from '../../protocols/nix/signing-key.ts'
import { tempDir } from '../helpers/temp-dir.ts'

const TEST_TIMEOUT = 60_000
const KILL_TEST_TIMEOUT = 120_000
const key = generateKeyPair('cache-test-1').secretKey

let root: string
let cleanup: () => Promise<void>
before(async () => { ({ dir: root, cleanup } = await tempDir('meshbuild-binary-cache-')) })
after(async () => { await cleanup() })

interface TestPath { info: NarInfo, nar: Buffer }

let seq = 0
/** A random, well-formed store path name's hash part. */
function hashPart (): string {
  return encodeNix32(randomBytes(20))
}

/** A real NAR of a small tree (a file, an executable, a symlink), with its signed narinfo. */
async function makePath (name: string, references: string[] = [], extraBytes = 0): Promise<TestPath> {
  const tree = join(root, `tree-${seq++}`)
  await mkdir(tree)
  await writeFile(join(tree, 'data'), Buffer.concat([Buffer.from(`${name} ${randomBytes(8).toString('hex')}\n`.repeat(200)), randomBytes(extraBytes)]))
  await writeFile(join(tree, 'run'), '#!/bin/sh\necho hi\n', { mode: 0o755 })
  const chunks: Uint8Array[] = []
  for await (const c of encodeNar(tree)) chunks.push(c)
  const nar = Buffer.concat(chunks)
  const storePath = `/nix/store/${hashPart()}-${name}`
  const info: NarInfo = {
    storePath,
    url: '',
    compression: 'none',
    narHash: Hash.of('sha256', nar),
    narSize: nar.length,
    references: references.map(r => r.slice('/nix/store/'.length)),
    sigs: []
  }
  return { info: signNarinfo(info, key), nar }
}

async function * chunked (data: Uint8Array, size = 4096): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size)
}

/** A NAR source that fails the test if anything reads it. */
function untouchable (): AsyncIterable<Uint8Array> & { read: boolean } {
  const src = {
    read: false,
    async * [Symbol.asyncIterator] (): AsyncGenerator<Uint8Array> {
      src.read = true
      yield new Uint8Array(0)
    }
  }
  return src
}

async function sha256File (path: string, transform?: CompressionName): Promise<{ hash: Hash, size: number }> {
  const h = createHash('sha256')
  let size = 0
  const sink = new Writable({ write (c: Buffer, _e, cb) { h.update(c); size += c.length; cb() } })
  if (transform === undefined) await pipeline(createReadStream(path), sink)
  else await pipeline(createReadStream(path), decompressor(transform), sink)
  return { hash: new Hash('sha256', h.digest()), size }
}

/** Every file in the cache directory but the index: what a crash could have left. */
async function listing (dir: string): Promise<{ narinfos: string[], nars: string[], tmp: string[] }> {
  return {
    narinfos: (await readdir(dir)).filter(n => n.endsWith('.narinfo')).sort(),
    nars: (await readdir(join(dir, 'nar'))).sort(),
    tmp: (await readdir(join(dir, 'tmp'))).sort()
  }
}

/**
 * The invariants a reader relies on: every narinfo names a NAR that is there with its FileSize
 * and whose references are there; every NAR is named by a narinfo; tmp/ is empty; the index
 * (has, stats) agrees.
 */
async function assertConsistent (cache: BinaryCache): Promise<NarInfo[]> {
  const { narinfos, nars, tmp } = await listing(cache.dir)
  assert.deepEqual(tmp, [], 'tmp/ is empty')
  const infos: NarInfo[] = []
  for (const name of narinfos) {
    const info = parseNarinfo(await readFile(join(cache.dir, name), 'utf8'))
    const file = await stat(join(cache.dir, info.url))
    assert.equal(file.size, info.fileSize, `NAR of ${info.storePath} is whole`)
    assert.equal(await cache.has(info.storePath), true, `index has ${info.storePath}`)
    infos.push(info)
  }
  const have = new Set(infos.map(i => i.storePath.slice('/nix/store/'.length)))
  for (const i of infos) for (const r of i.references) assert.ok(have.has(r), `reference ${r} of ${i.storePath} is there`)
  assert.deepEqual(nars, [...new Set(infos.map(i => i.url.slice(4)))].sort(), 'every NAR is named by a narinfo')
  assert.equal(cache.stats().paths, infos.length)
  return infos
}

describe('BinaryCache.add', { timeout: TEST_TIMEOUT }, () => {
  const cases: Array<{ compression: CompressionName, ext: string }> = [
    { compression: 'zstd', ext: '.nar.zst' },
    { compression: 'br', ext: '.nar.br' },
    { compression: 'none', ext: '.nar' }
  ]
  for (const c of cases) {
    it(`publishes NAR and narinfo with ${c.compression}: FileHash/FileSize of the file, NarHash of its contents`, async () => {
      const dir = join(root, `add-${c.compression}`)
      const cache = await BinaryCache.open(dir, { compression: c.compression })
      try {
        const dep = await makePath('dep', [], 100_000)
        const top = await makePath('top', [dep.info.storePath])
        top.info = signNarinfo({ ...top.info, references: [...top.info.references, top.info.storePath.slice(11)], sigs: [] }, key) // refers to itself too
        const depAdded = await cache.add(dep.info, chunked(dep.nar))
        assert.equal(depAdded.added, true)
        const { added, info } = await cache.add(top.info, chunked(top.nar, 777))
        assert.equal(added, true)
        assert.equal(info.compression, c.compression)
        assert.match(info.url, new RegExp(`^nar/[0-9a-z]{52}${c.ext.replace(/\./g, '\\.')}$`))

        const hp = top.info.storePath.slice(11, 43)
        const text = await cache.narinfoText(hp)
        assert.equal(text, formatNarinfo(info))
        assert.equal(await readFile(join(dir, `${hp}.narinfo`), 'utf8'), text)
        const parsed = parseNarinfo(text ?? '')
        // Everything the caller gave is kept, signature included.
        const { fileHash: _h, fileSize: _s, ...given } = parsed
        assert.equal(formatNarinfo({ ...given, url: '', compression: 'none' }), formatNarinfo(top.info))
        assert.equal(parsed.url, `nar/${encodeNix32(parsed.fileHash?.digest ?? new Uint8Array())}${c.ext}`)

        const file = await sha256File(join(dir, parsed.url))
        assert.ok(parsed.fileHash?.equals(file.hash), 'FileHash is the hash of the file')
        assert.equal(parsed.fileSize, file.size)
        const unpacked = await sha256File(join(dir, parsed.url), c.compression)
        assert.ok(unpacked.hash.equals(top.info.narHash), 'the file decompresses to the NAR')
        assert.equal(unpacked.size, top.nar.length)
        if (c.compression !== 'none') assert.ok(file.size < top.nar.length, 'compressed')

        assert.deepEqual(await cache.narFile(parsed.url.slice(4)), { path: join(dir, parsed.url), size: file.size })
        assert.equal(await cache.has(top.info.storePath), true)
        const absent = `/nix/store/${hashPart()}-absent`
        assert.deepEqual(await cache.missing([dep.info.storePath, absent, top.info.storePath]), [absent])
        const s = cache.stats()
        assert.equal(s.paths, 2)
        assert.equal(s.narBytes, dep.nar.length + top.nar.length)
        assert.equal(s.fileBytes, (depAdded.info.fileSize ?? NaN) + file.size)
        assert.equal(await readFile(join(dir, 'nix-cache-info'), 'utf8'), NIX_CACHE_INFO)
        await assertConsistent(cache)
      } finally {
        await cache.close()
      }
    })
  }

  it('does nothing for a path already present: the NAR is not read, the first narinfo stays', async () => {
    const cache = await BinaryCache.open(join(root, 'twice'))
    try {
      const p = await makePath('twice')
      const first = await cache.add(p.info, chunked(p.nar))
      const src = untouchable()
      const again = await cache.add(p.info, src)
      assert.equal(again.added, false)
      assert.equal(src.read, false)
      assert.equal(formatNarinfo(again.info), formatNarinfo(first.info))
      // Two adds of the same path at once: one stores, the other waits and reads nothing.
      const q = await makePath('racing')
      const src2 = untouchable()
      const [a, b] = await Promise.all([cache.add(q.info, chunked(q.nar)), cache.add(q.info, src2)])
      assert.deepEqual([a.added, b.added], [true, false])
      assert.equal(src2.read, false)
      await assertConsistent(cache)
    } finally {
      await cache.close()
    }
  })

  const refusals: Array<{ name: string, make: (p: TestPath) => { info: NarInfo, nar: Uint8Array }, error: string, match: RegExp, actualHash: boolean }> = [
    {
      name: 'a flipped byte',
      make: p => {
        const nar = Buffer.from(p.nar)
        const at = nar.length >> 1
        nar[at] = (nar[at] ?? 0) ^ 0x01
        return { info: p.info, nar }
      },
      error: 'NarHashMismatch',
      match: /does not match: expected sha256:[0-9a-z]{52} \(\d+ bytes\), got sha256:[0-9a-z]{52} \(\d+ bytes\)/,
      actualHash: true
    },
    {
      name: 'a truncated NAR',
      make: p => ({ info: p.info, nar: p.nar.subarray(0, p.nar.length - 8) }),
      error: 'NarHashMismatch',
      match: /got sha256:\S+ \(\d+ bytes\)/,
      actualHash: true
    },
    {
      name: 'a NAR longer than its NarSize (cut short, never written whole)',
      make: p => ({ info: p.info, nar: Buffer.concat([p.nar, Buffer.alloc(1 << 20)]) }),
      error: 'NarHashMismatch',
      match: /got more than \d+ bytes/,
      actualHash: false
    }
  ]
  for (const r of refusals) {
    it(`refuses ${r.name} and leaves no file behind`, async () => {
      const dir = join(root, `refuse-${seq++}`)
      const cache = await BinaryCache.open(dir)
      try {
        const p = await makePath('victim', [], 300_000)
        const bad = r.make(p)
        await assert.rejects(cache.add(bad.info, chunked(bad.nar, 65536)), (err: Error & { path?: string, expectedHash?: Hash, actualHash?: Hash }) => {
          assert.equal(err.name, r.error)
          assert.match(err.message, r.match)
          assert.ok(err.message.includes(p.info.storePath), err.message)
          assert.equal(err.path, p.info.storePath)
          assert.ok(err.expectedHash?.equals(p.info.narHash))
          assert.equal(err.actualHash !== undefined, r.actualHash)
          return true
        })
        assert.deepEqual(await listing(dir), { narinfos: [], nars: [], tmp: [] })
        assert.equal(await cache.has(p.info.storePath), false)
        assert.equal(cache.stats().paths, 0)
        // The good NAR is still welcome afterwards.
        assert.equal((await cache.add(p.info, chunked(p.nar))).added, true)
        await assertConsistent(cache)
      } finally {
        await cache.close()
      }
    })
  }

  it('refuses a path whose reference is not in the cache, naming both, without reading the NAR', async () => {
    const dir = join(root, 'refs')
    const cache = await BinaryCache.open(dir)
    try {
      const dep = await makePath('dep')
      const top = await makePath('top', [dep.info.storePath])
      const src = untouchable()
      await assert.rejects(cache.add(top.info, src), (err: Error & { path?: string, reference?: string }) => {
        assert.equal(err.name, 'ReferenceMissing')
        assert.equal(err.path, top.info.storePath)
        assert.equal(err.reference, dep.info.storePath)
        assert.ok(err.message.includes(top.info.storePath) && err.message.includes(dep.info.storePath), err.message)
        return true
      })
      assert.equal(src.read, false)
      assert.deepEqual(await listing(dir), { narinfos: [], nars: [], tmp: [] })
      // In closure order it goes in.
      await cache.add(dep.info, chunked(dep.nar))
      assert.equal((await cache.add(top.info, chunked(top.nar))).added, true)
    } finally {
      await cache.close()
    }
  })

  it('refuses a narinfo without a signature', async () => {
    const cache = await BinaryCache.open(join(root, 'unsigned'))
    try {
      const p = await makePath('unsigned')
      await assert.rejects(cache.add({ ...p.info, sigs: [] }, chunked(p.nar)), { name: 'UnsignedNarinfo' })
      assert.equal(await cache.has(p.info.storePath), false)
    } finally {
      await cache.close()
    }
  })

  it('stops when aborted mid-stream and keeps nothing', async () => {
    const dir = join(root, 'abort')
    const cache = await BinaryCache.open(dir)
    try {
      const p = await makePath('aborted', [], 2_000_000)
      const ac = new AbortController()
      async function * slow (): AsyncGenerator<Uint8Array> {
        for await (const c of chunked(p.nar, 65536)) {
          yield c
          await sleep(5)
        }
      }
      setTimeout(() => { ac.abort(new Error('peer went away')) }, 40)
      await assert.rejects(cache.add(p.info, slow(), { signal: ac.signal }), { name: 'AbortError', message: /peer went away/ })
      assert.deepEqual(await listing(dir), { narinfos: [], nars: [], tmp: [] })
    } finally {
      await cache.close()
    }
  })

  it('refuses a second process on the same directory', async () => {
    const dir = join(root, 'locked')
    const cache = await BinaryCache.open(dir)
    try {
      await assert.rejects(BinaryCache.open(dir), { name: 'CacheInUse' })
    } finally {
      await cache.close()
    }
  })

  it('names the compressions it knows', () => {
    assert.equal(parseCompression('zstd'), 'zstd')
    assert.throws(() => parseCompression('xz'), { name: 'UnknownCompression', message: /'xz'.*zstd, br, none/ })
  })
})

describe('BinaryCache recovery on open', { timeout: TEST_TIMEOUT }, () => {
  it('removes temporary files, narinfos without NAR (and their referrers), orphan NARs, and fixes the index', async () => {
    const dir = join(root, 'crashed')
    let cache = await BinaryCache.open(dir)
    const keep = await makePath('keep')
    const lost = await makePath('lost')
    const referrer = await makePath('referrer', [lost.info.storePath])
    const short = await makePath('short', [], 50_000)
    const unindexed = await makePath('unindexed')
    const published: Record<string, NarInfo> = {}
    for (const p of [keep, lost, referrer, short, unindexed]) published[p.info.storePath] = (await cache.add(p.info, chunked(p.nar))).info
    await cache.close()
    const hp = (p: TestPath): string => p.info.storePath.slice(11, 43)
    const url = (p: TestPath): string => published[p.info.storePath]?.url ?? ''

    // What a crash can leave, and worse:
    await writeFile(join(dir, 'tmp', `${hp(keep)}-deadbeef.nar.zst`), randomBytes(1000)) // a NAR being written
    await writeFile(join(dir, 'tmp', 'abc.part'), 'StorePath: /nix/st') // a narinfo being written
    const { rm, truncate } = await import('node:fs/promises')
    await rm(join(dir, url(lost))) // a narinfo without its NAR; `referrer` refers to it
    await truncate(join(dir, url(short)), 100) // a NAR cut short
    const orphan = `${encodeNix32(randomBytes(32))}.nar.zst`
    await writeFile(join(dir, 'nar', orphan), randomBytes(100)) // renamed in, narinfo never written
    await writeFile(join(dir, `${hashPart()}.narinfo`), 'garbage') // unparsable
    // The index out of step: a record for a path with no files, none for one that has them.
    const { Level } = await import('level')
    const db = new Level<string, string>(join(dir, 'index'), { valueEncoding: 'utf8' })
    await db.open()
    const ghost = `/nix/store/${hashPart()}-ghost`
    await db.put(`path:${ghost.slice(11, 43)}`, JSON.stringify({ storePath: ghost }))
    await db.del(`path:${hp(unindexed)}`)
    await db.close()

    cache = await BinaryCache.open(dir)
    try {
      const r = cache.recovery
      assert.equal(r.tmpRemoved, 2)
      assert.deepEqual(new Set(r.narinfosRemoved.filter(p => p.startsWith('/'))), new Set([lost.info.storePath, referrer.info.storePath, short.info.storePath]))
      assert.equal(r.narinfosRemoved.length, 4) // and the garbage one
      assert.ok(r.narsRemoved.includes(orphan))
      assert.ok(r.narsRemoved.includes(url(referrer).slice(4)), 'the referrer’s NAR goes with its narinfo')
      assert.ok(r.indexFixed >= 5, `index fixes: ${r.indexFixed}`)
      const infos = await assertConsistent(cache)
      assert.deepEqual(infos.map(i => i.storePath).sort(), [keep.info.storePath, unindexed.info.storePath].sort())
      assert.deepEqual(await cache.missing([keep.info.storePath, unindexed.info.storePath, lost.info.storePath, ghost]), [lost.info.storePath, ghost])
      // What was removed can be added again.
      assert.equal((await cache.add(lost.info, chunked(lost.nar))).added, true)
      assert.equal((await cache.add(referrer.info, chunked(referrer.nar))).added, true)
      await assertConsistent(cache)
    } finally {
      await cache.close()
    }
    // A clean shutdown leaves nothing to repair.
    cache = await BinaryCache.open(dir)
    assert.deepEqual(cache.recovery, { tmpRemoved: 0, narinfosRemoved: [], narsRemoved: [], indexFixed: 0 })
    await cache.close()
  })

  // A child process adds to the cache; kill -9 lands (1) in the middle of a large NAR, (2) at
  // an arbitrary moment in a stream of small adds, so at any of the publishing steps.
  const CHILD = `
    import { BinaryCache } from ${JSON.stringify(new URL('../../node/cache/binary-cache.ts', import.meta.url).href)}
    import { signNarinfo } from ${JSON.stringify(new URL('../../protocols/nix/signature.ts', import.meta.url).href)}
    import { secretKeyFromSeed } from ${JSON.stringify(new URL('../../protocols/nix/signing-key.ts', import.meta.url).href)}
    import { Hash } from ${JSON.stringify(new URL('../../protocols/nix/hash.ts', import.meta.url).href)}
    import { encodeNix32 } from ${JSON.stringify(new URL('../../protocols/nix/nix32.ts', import.meta.url).href)}
    import { createHash, randomBytes } from 'node:crypto'
    import { setTimeout as sleep } from 'node:timers/promises'
    const [dir, mode] = process.argv.slice(2)
    const key = secretKeyFromSeed('child-1', new Uint8Array(32))
    const cache = await BinaryCache.open(dir)
    const CHUNK = 256 * 1024
    const pathOf = (size, slow) => {
      // The same random block with its index stamped in: the hash is known before streaming.
      const base = randomBytes(Math.min(size, CHUNK))
      const n = Math.ceil(size / base.length)
      const chunk = (i) => { const c = Buffer.from(base); c.writeUInt32LE(i, 0); return c }
      const h = createHash('sha256')
      for (let i = 0; i < n; i++) h.update(chunk(i))
      const info = signNarinfo({ storePath: '/nix/store/' + encodeNix32(randomBytes(20)) + '-p', url: '', compression: 'none',
        narHash: new Hash('sha256', h.digest()), narSize: n * base.length, references: [], sigs: [] }, key)
      async function * nar () {
        for (let i = 0; i < n; i++) {
          yield chunk(i)
          if (slow) await sleep(5)
        }
      }
      return { info, nar }
    }
    if (mode === 'large') {
      const p = pathOf(256 * 1024 * 1024, true)
      process.stdout.write('adding\\n')
      await cache.add(p.info, p.nar())
      process.stdout.write('finished\\n')
    } else {
      for (let i = 0; ; i++) {
        const p = pathOf(1024 + (i % 7) * 70000, false)
        await cache.add(p.info, p.nar())
        if (i === 5) process.stdout.write('adding\\n')
      }
    }
  `

  async function killMidway (dir: string, mode: 'large' | 'small', when: () => Promise<void>): Promise<void> {
    const script = join(root, `child-${seq++}.mjs`)
    await writeFile(script, CHILD)
    const child = spawn(process.execPath, [script, dir, mode], { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    const exited = new Promise<number | null>(resolve => child.on('exit', (code, signal) => { resolve(signal === 'SIGKILL' ? null : code) }))
    try {
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('adding')) resolve() })
        void exited.then(code => { reject(new Error(`child exited ${code} before adding: ${err}`)) })
        setTimeout(() => { reject(new Error(`child did not start adding: ${err}`)) }, 30_000).unref()
      })
      await when()
    } finally {
      child.kill('SIGKILL')
    }
    assert.equal(await exited, null, `the child was killed, not finished: ${err}`)
  }

  it('kill -9 in the middle of a large NAR: nothing partial after reopening, earlier paths intact', { timeout: KILL_TEST_TIMEOUT }, async () => {
    const dir = join(root, 'killed-large')
    let cache = await BinaryCache.open(dir)
    const before = await makePath('before', [], 100_000)
    await cache.add(before.info, chunked(before.nar))
    await cache.close()

    await killMidway(dir, 'large', async () => {
      // Until the NAR is being written to tmp/, then a little longer (the whole takes ~5 s).
      const deadline = Date.now() + 30_000
      for (;;) {
        const files = await readdir(join(dir, 'tmp'))
        const sizes = await Promise.all(files.map(async f => (await stat(join(dir, 'tmp', f))).size))
        if (sizes.some(s => s > 0)) break
        if (Date.now() > deadline) throw new Error('the child wrote nothing to tmp/')
        await sleep(20)
      }
      await sleep(300)
    })
    assert.equal((await listing(dir)).tmp.length, 1, 'the partial NAR was in tmp/ when the child died')

    cache = await BinaryCache.open(dir)
    try {
      assert.equal(cache.recovery.tmpRemoved, 1)
      const infos = await assertConsistent(cache)
      assert.deepEqual(infos.map(i => i.storePath), [before.info.storePath])
      const u = infos[0]?.url ?? ''
      assert.ok((await sha256File(join(dir, u), 'zstd')).hash.equals(before.info.narHash))
    } finally {
      await cache.close()
    }
  })

  for (const delay of [150, 400, 900]) {
    it(`kill -9 at an arbitrary point of many small adds (after ${delay} ms): every narinfo has its NAR`, { timeout: KILL_TEST_TIMEOUT }, async () => {
      const dir = join(root, `killed-small-${delay}`)
      await killMidway(dir, 'small', async () => { await sleep(delay) })
      const cache = await BinaryCache.open(dir)
      try {
        const infos = await assertConsistent(cache)
        assert.ok(infos.length >= 6, `the child had added ${infos.length} paths`)
        for (const info of infos.slice(0, 3)) {
          assert.ok((await sha256File(join(dir, info.url), 'zstd')).hash.equals(info.narHash), `${info.storePath} intact`)
        }
      } finally {
        await cache.close()
      }
    })
  }
})
