// Claims between owners: what an owner lists (its unfinished jobs, the ones under way first, a
// bounded number), and to whom it defers a job both claim (the claimant whose id sorts first,
// only if before its own, never one the job gave up on).
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { claimant, claimKey, ownClaims, type ClaimSets } from '../../node/scheduler/claims.ts'
import type { Job, JobState } from '../../node/scheduler/job.ts'

const drv = (name: string): string => `/nix/store/${name.padEnd(32, 'a')}-${name}.drv`

function job (name: string, state: JobState, over: Partial<Job> = {}): Job {
  return { drvPath: drv(name), outputs: { out: `/nix/store/${name}` }, inputJobs: [], system: 'x86_64-linux', requiredFeatures: [], state, priority: 5, criticalPath: 1, attempts: 0, submissions: ['s'], ...over }
}

describe('ownClaims', () => {
  it('lists started jobs apart from the open ones (ready before waiting), and none finished, deferred, checked, or for the builder socket', () => {
    const jobs = [job('w', 'waiting', { criticalPath: 9 }), job('r', 'ready'), job('b', 'built'), job('f', 'failed'), job('l', 'leased'), job('i', 'importing'), job('d', 'ready'), job('s', 'ready', { remoteOnly: true }), job('c', 'ready', { check: true })]
    const c = ownClaims(jobs, j => j.drvPath === drv('d'))
    assert.deepEqual(c.open, [claimKey(drv('r')), claimKey(drv('w'))])
    assert.deepEqual(c.started, [claimKey(drv('l')), claimKey(drv('i'))])
  })

  it('is bounded, keeping the most urgent', () => {
    const jobs = Array.from({ length: 10 }, (_, i) => job(`j${i}`, 'ready', { priority: 10 - i }))
    assert.deepEqual(ownClaims(jobs, () => false, 3).open, [claimKey(drv('j9')), claimKey(drv('j8')), claimKey(drv('j7'))])
  })
})

describe('claimant', () => {
  const x = job('x', 'ready')
  const claims = (entries: Array<[string, string[], string[]?]>): Map<string, ClaimSets> => new Map(entries.map(([p, open, started = []]) => [p, {
    open: new Set(open.map(d => claimKey(drv(d)))), started: new Set(started.map(d => claimKey(drv(d))))
  }]))

  it('is the claiming peer whose id sorts first, when it sorts before ours', () => {
    assert.equal(claimant(x, claims([['peer-c', ['x']], ['peer-a', ['x']], ['peer-0', ['y']]]), 'peer-b'), 'peer-a')
  })

  it('is none when every claimant sorts after us: then we build, and they defer to us', () => {
    assert.equal(claimant(x, claims([['peer-c', ['x']]]), 'peer-b'), undefined)
  })

  it('is a peer that has started the job, whatever its id', () => {
    assert.equal(claimant(x, claims([['peer-c', [], ['x']], ['peer-a', ['x']]]), 'peer-b'), 'peer-c')
  })

  it('skips a peer the job gave up deferring to, and never defers checked or builder-socket jobs', () => {
    const c = claims([['peer-a', ['x']], ['peer-b', ['x']]])
    assert.equal(claimant({ ...x, notDeferTo: ['peer-a'] }, c, 'peer-z'), 'peer-b')
    assert.equal(claimant({ ...x, check: true }, c, 'peer-z'), undefined)
    assert.equal(claimant({ ...x, remoteOnly: true }, c, 'peer-z'), undefined)
  })
})
