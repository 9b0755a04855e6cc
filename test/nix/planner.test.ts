// A submission's plan (node/mesh/planner.ts) when the shared cache has nothing or substitution
// fails: every output not valid locally becomes a job, with its dependencies; what the cache
// reported is not trusted once substituting it failed (the submit path plans again without it).
// Real .drv files from nix-instantiate; the store is a fake whose valid paths the test chooses.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { planSubmission } from '../../node/mesh/planner.ts'
import type { StoreBackend } from '../../node/nix/store-backend.ts'
import { outputPaths, readDerivation } from '../../protocols/nix/derivation.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'

class CacheDown extends Error {
  override name = 'CacheDown'
}

/** A store where every .drv and the given outputs are valid. */
function fakeStore (validOutputs: Set<string>): StoreBackend {
  const store: Partial<StoreBackend> = {
    isValid: async (paths) => new Set(paths.filter(p => p.endsWith('.drv') || validOutputs.has(p)))
  }
  return store as StoreBackend
}

describe('planSubmission when substitution gives nothing', { timeout: 60_000 }, () => {
  let cleanup: () => Promise<void>
  let drv: { dep: string, mid: string, top: string }
  let out: { dep: string, mid: string, top: string }

  before(async () => {
    let dir: string
    ({ dir, cleanup } = await tempDir('meshbuild-planner-'))
    const tag = `${Date.now()}-${Math.random()}`
    const expr = `rec {
      dep = ${shDrv('plan-dep', `echo dep ${tag} > $out`)};
      mid = ${shDrv('plan-mid', `echo mid ${tag} > $out`, 'inherit dep;')};
      top = ${shDrv('plan-top', `echo top ${tag} > $out`, 'inherit mid;')};
    }`
    const [dep, mid, top] = await instantiate(expr, dir, ['dep', 'mid', 'top'])
    assert.ok(dep !== undefined && mid !== undefined && top !== undefined)
    drv = { dep, mid, top }
    const outOf = async (p: string): Promise<string> => outputPaths(await readDerivation(p)).get('out') ?? assert.fail(`${p} has no out`)
    out = { dep: await outOf(dep), mid: await outOf(mid), top: await outOf(top) }
  })

  after(async () => { await cleanup?.() })

  const plan = async (store: StoreBackend, substitutable?: (paths: string[]) => Promise<Set<string>>): Promise<Awaited<ReturnType<typeof planSubmission>>> =>
    await planSubmission(store, [drv.top], { id: 's', priority: 0, now: 0, ...(substitutable !== undefined ? { substitutable } : {}) })

  const jobsOf = (spec: Awaited<ReturnType<typeof planSubmission>>): Record<string, string[]> =>
    Object.fromEntries(spec.jobs.map(j => [j.drvPath, j.inputJobs]))

  it('plans every job, with its dependencies, when the cache reports nothing', async () => {
    const asked: string[][] = []
    const spec = await plan(fakeStore(new Set()), async (paths) => { asked.push(paths); return new Set() })
    assert.deepEqual(jobsOf(spec), { [drv.top]: [drv.mid], [drv.mid]: [drv.dep], [drv.dep]: [] })
    assert.deepEqual(spec.substituted, [])
    assert.deepEqual(asked, [[out.top], [out.mid], [out.dep]], 'the cache was asked, level by level, for what is not valid')
    // The same plan as with no cache at all.
    assert.deepEqual(jobsOf(await plan(fakeStore(new Set()))), jobsOf(spec))
  })

  it('still counts outputs valid locally when the cache reports nothing', async () => {
    const spec = await plan(fakeStore(new Set([out.dep])), async () => new Set())
    assert.deepEqual(jobsOf(spec), { [drv.top]: [drv.mid], [drv.mid]: [] })
    assert.deepEqual(spec.substituted.map(j => j.drvPath), [drv.dep])
  })

  it('plans the whole build again once substitution failed: the cache\'s word is dropped', async () => {
    // What the cache claimed: top is available, so nothing needs building.
    const claimed = await plan(fakeStore(new Set()), async (paths) => new Set(paths.filter(p => p === out.top)))
    assert.deepEqual(claimed.jobs, [])
    assert.deepEqual(claimed.substituted.map(j => j.drvPath), [drv.top])
    // Substituting it then fails (nothing became valid); the submit path plans without the cache.
    const fallback = await plan(fakeStore(new Set()))
    assert.deepEqual(jobsOf(fallback), { [drv.top]: [drv.mid], [drv.mid]: [drv.dep], [drv.dep]: [] })
    assert.deepEqual(fallback.substituted, [])
  })

  it('fails the plan, not silently, when asking the cache throws', async () => {
    await assert.rejects(plan(fakeStore(new Set()), async () => { throw new CacheDown('cache unreachable') }), { name: 'CacheDown' })
  })
})
