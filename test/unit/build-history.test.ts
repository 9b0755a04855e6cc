// The build history (node/state/build-history.ts): names as Nix parses them, the smoothed time
// under a derivation's name and its package name, the bound on entries, and the history kept in
// a real LevelDB across a restart of the state database.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { derivationName, parseDrvName } from '../../protocols/nix/drv-name.ts'
import { BuildHistory, MAX_HISTORY_ENTRIES } from '../../node/state/build-history.ts'
import { StateDb, type BuildTimeRecord } from '../../node/state/state-db.ts'

const HASH = '0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm'
const drv = (name: string, hash = HASH): string => `/nix/store/${hash}-${name}.drv`

/** The two methods of StateDb the history uses, over a Map; `deleted` lists removed keys. */
function memoryDb (initial: Array<[string, BuildTimeRecord]> = []): { db: Pick<StateDb, 'loadBuildTimes' | 'putBuildTimes'>, stored: Map<string, BuildTimeRecord>, deleted: string[] } {
  const stored = new Map(initial)
  const deleted: string[] = []
  return {
    stored,
    deleted,
    db: {
      loadBuildTimes: async () => [...stored],
      putBuildTimes: (put, del = []) => {
        for (const k of del) { stored.delete(k); deleted.push(k) }
        for (const [k, v] of put) stored.set(k, v)
      }
    }
  }
}

async function withDir (fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'meshbuild-history-'))
  try { await fn(dir) } finally { await rm(dir, { recursive: true, force: true }) }
}

describe('derivation names', () => {
  // [name, package name, version]: builtins.parseDrvName splits at the first '-' not followed by a letter.
  const cases: Array<[string, string, string]> = [
    ['hello-2.12', 'hello', '2.12'],
    ['apache-httpd-2.0.48', 'apache-httpd', '2.0.48'],
    ['python3.11-requests-2.31.0', 'python3.11-requests', '2.31.0'],
    ['firefox-esr-115.0-unwrapped', 'firefox-esr', '115.0-unwrapped'],
    ['linux-6.1-modules', 'linux', '6.1-modules'],
    ['stdenv-linux', 'stdenv-linux', ''],
    ['foo--1', 'foo', '-1'],
    ['x-_y', 'x', '_y'],
    ['x-.y', 'x', '.y'],
    ['trailing-', 'trailing-', ''],
    ['hello', 'hello', '']
  ]
  for (const [s, name, version] of cases) {
    it(`parses ${s} as ${name} and '${version}'`, () => {
      assert.deepEqual(parseDrvName(s), { name, version })
    })
  }

  it('takes a derivation path\'s name without its hash part and .drv', () => {
    assert.equal(derivationName(drv('hello-2.12')), 'hello-2.12')
    assert.equal(derivationName(`/nix/store/${HASH}-source`), 'source')
    assert.throws(() => derivationName('/nix/store/nohash-hello.drv'), { name: 'StorePathError' })
  })
})

describe('BuildHistory', () => {
  it('smooths the samples of a name: half the old time, half the new', () => {
    const m = memoryDb()
    const h = new BuildHistory(m.db)
    h.record(drv('hello-2.12'), 1000, 1)
    assert.equal(h.estimate(drv('hello-2.12')), 1000)
    h.record(drv('hello-2.12', '1xh2mx6wsnyhq8lygnxq3c5m6x5j8l8y'), 3000, 2)
    assert.equal(h.estimate(drv('hello-2.12')), 2000, 'a derivation of the same name, another hash, shares the time')
    h.record(drv('hello-2.12'), 1000, 3)
    assert.equal(h.estimate(drv('hello-2.12')), 1500)
    assert.deepEqual(m.stored.get('name/hello-2.12'), { ms: 1500, count: 3, at: 3 })
  })

  it('gives a new version its package\'s time, and a known name its own', () => {
    const h = new BuildHistory(memoryDb().db)
    h.record(drv('hello-2.12'), 1000, 1)
    h.record(drv('hello-2.13'), 5000, 2)
    assert.equal(h.estimate(drv('hello-2.12')), 1000, 'the exact name comes first')
    assert.equal(h.estimate(drv('hello-2.14')), 3000, 'a new version: the package name hello, both samples smoothed')
    assert.equal(h.estimate(drv('hello-world-1.0')), undefined, 'another package')
    assert.equal(h.estimate(drv('goodbye-2.12')), undefined)
    assert.equal(h.estimate('not a store path'), undefined)
    assert.equal(h.names, 2)
    assert.equal(h.size, 3)
  })

  it('ignores samples that are no time', () => {
    const h = new BuildHistory(memoryDb().db)
    h.record(drv('hello-2.12'), -5, 1)
    h.record(drv('hello-2.12'), Number.NaN, 1)
    assert.equal(h.estimate(drv('hello-2.12')), undefined)
    assert.equal(h.size, 0)
  })

  it('keeps at most its bound of entries, dropping the least recently updated, from disk too', () => {
    assert.equal(MAX_HISTORY_ENTRIES, 100_000)
    const m = memoryDb()
    const h = new BuildHistory(m.db, { maxEntries: 4 })
    h.record(drv('a-1'), 100, 1) // name/a-1, pname/a
    h.record(drv('b-1'), 200, 2) // name/b-1, pname/b
    h.record(drv('a-1'), 100, 3) // a is the most recent now
    h.record(drv('c-1'), 300, 4) // over the bound: b goes
    assert.equal(h.size, 4)
    assert.equal(h.estimate(drv('b-1')), undefined)
    assert.equal(h.estimate(drv('b-2')), undefined)
    assert.equal(h.estimate(drv('a-1')), 100)
    assert.equal(h.estimate(drv('c-1')), 300)
    assert.deepEqual(m.deleted.sort(), ['name/b-1', 'pname/b'])
    assert.deepEqual([...m.stored.keys()].sort(), ['name/a-1', 'name/c-1', 'pname/a', 'pname/c'])
  })

  it('loads what was written, the oldest dropped first when the bound is smaller', async () => {
    const m = memoryDb([
      ['name/new-1', { ms: 10, count: 1, at: 30 }],
      ['name/old-1', { ms: 20, count: 1, at: 10 }],
      ['name/mid-1', { ms: 30, count: 1, at: 20 }],
      ['name/broken-1', { ms: 'x', count: 1, at: 5 } as unknown as BuildTimeRecord]
    ])
    const h = new BuildHistory(m.db, { maxEntries: 2 })
    await h.load()
    assert.equal(h.estimate(drv('new-1')), 10)
    assert.equal(h.estimate(drv('mid-1')), 30)
    assert.equal(h.estimate(drv('old-1')), undefined)
    assert.equal(h.estimate(drv('broken-1')), undefined)
    assert.equal(m.stored.has('name/old-1'), false)
  })

  it('survives a restart of the state database (LevelDB)', async () => {
    await withDir(async (dir) => {
      const path = join(dir, 'state')
      const db = new StateDb(path)
      await db.open()
      const h = new BuildHistory(db)
      h.record(drv('hello-2.12'), 1000, 1)
      h.record(drv('hello-2.12'), 2000, 2)
      h.record(drv('zlib-1.3'), 400, 3)
      await db.flush()
      await db.close()

      const again = new StateDb(path)
      await again.open()
      try {
        const h2 = new BuildHistory(again)
        await h2.load()
        assert.equal(h2.estimate(drv('hello-2.12')), 1500)
        assert.equal(h2.estimate(drv('hello-3.0')), 1500, 'the package name too')
        assert.equal(h2.estimate(drv('zlib-1.3')), 400)
        assert.equal(h2.names, 2)
        // Recency came back from disk: hello, older, is dropped first.
        const small = new BuildHistory(again, { maxEntries: 2 })
        await small.load()
        await again.flush()
        assert.equal(small.estimate(drv('hello-2.12')), undefined)
        assert.equal(small.estimate(drv('zlib-1.3')), 400)
        const h3 = new BuildHistory(again)
        await h3.load()
        assert.equal(h3.size, 2, 'the dropped entries are gone from disk')
      } finally {
        await again.close()
      }
    })
  })
})
