// Build-time estimates (JobSpec.estimatedMs, from the owner's history of earlier builds): the
// remaining path is estimated work, so a long build goes before short ones, and a job whose
// path would end after the rest of the build on a slow builder is kept for a faster one, for
// no longer than the faster one would save.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { FASTER_HOLD_MS, Scheduler, SCHEDULER_DEFAULTS, type Decision, type PeerView, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import { criticalPaths, UNKNOWN_ESTIMATE_MS } from '../../node/scheduler/critical-path.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec, SubmissionSpec } from '../../node/scheduler/job.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }
const MINUTE = 60_000

// The owner's id sorts first: no claim hold between a submission and its grants.
function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: '0-self', capabilities: X86, maxJobs: 0, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, ...over }
}

function spec (name: string, estimatedMs?: number, inputs: string[] = []): JobSpec {
  return {
    drvPath: `/nix/store/${name}.drv`, outputs: { out: `/nix/store/${name}` }, inputJobs: inputs.map(i => `/nix/store/${i}.drv`),
    system: 'x86_64-linux', requiredFeatures: [], ...(estimatedMs !== undefined ? { estimatedMs } : {})
  }
}

function submission (jobs: JobSpec[]): SubmissionSpec {
  return { id: 's1', requested: jobs.map(j => j.drvPath), jobs, substituted: [], priority: 5, submittedAt: 0 }
}

const peer = (id: string, speedFactor: number, maxJobs: number, over: Partial<PeerView> = {}): PeerView => ({
  peerId: id, capabilities: X86, maxJobs, running: 0, queued: 0, speedFactor, offers: [], ...over
})

const granted = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'grant' ? d.items.map(i => i.drvPath.slice(11, -4)) : [])
const steal = (s: Scheduler, from: string, want: number, at: number): string[] =>
  granted(s.handle({ type: 'steal-request', requestId: `${from}-${at}`, from, capabilities: X86, want }, at))

describe('scheduler with build-time estimates', () => {
  it('measures the remaining path in estimated work, unknown jobs at UNKNOWN_ESTIMATE_MS', () => {
    const paths = criticalPaths([spec('lib', 2 * MINUTE), spec('app', 10 * MINUTE, ['lib']), spec('tool', undefined, ['lib']), spec('new')])
    assert.equal(paths.get('/nix/store/lib.drv'), 12 * MINUTE)
    assert.equal(paths.get('/nix/store/tool.drv'), UNKNOWN_ESTIMATE_MS)
    assert.equal(paths.get('/nix/store/new.drv'), UNKNOWN_ESTIMATE_MS)
  })

  it('grants one long build before a chain of short ones, where counting jobs would put the chain first', () => {
    const jobs = [spec('long', 60 * MINUTE), spec('a', MINUTE), spec('b', MINUTE, ['a']), spec('c', MINUTE, ['b'])]
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('fast', 4, 1) }, 0)
    s.handle({ type: 'submit', submission: submission(jobs) }, 10)
    assert.deepEqual(steal(s, 'fast', 1, 20), ['long'])
    // Without estimates the chain's head is the longer path (three jobs against one).
    const counted = new Scheduler(config())
    counted.handle({ type: 'peer-seen', peer: peer('fast', 4, 1) }, 0)
    counted.handle({ type: 'submit', submission: submission(jobs.map(({ estimatedMs: _, ...j }) => j)) }, 10)
    assert.deepEqual(steal(counted, 'fast', 1, 20), ['a'])
  })

  it('keeps a build that would outlast the rest from a slow thief while a faster machine is known, even a busy one', () => {
    // Four short jobs and one long: on the slow thief the long one would end at 40 min, the
    // rest of the work spread over the mesh takes far less.
    const jobs = [spec('long', 40 * MINUTE), ...['s1', 's2', 's3', 's4'].map(n => spec(n, MINUTE))]
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('fast', 4, 1, { running: 1 }) }, 0)
    s.handle({ type: 'peer-seen', peer: peer('slow', 1, 4) }, 0)
    s.handle({ type: 'submit', submission: submission(jobs) }, 10)
    const toSlow = steal(s, 'slow', 4, 20 + FASTER_HOLD_MS)
    assert.deepEqual(toSlow.sort(), ['s1', 's2', 's3', 's4'], 'the slow thief got the long build')
    assert.deepEqual(steal(s, 'fast', 1, 30 + FASTER_HOLD_MS), ['long'])
  })

  it('gives the long build to the slow thief once it has waited as long as the faster machine would save', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('fast', 4, 1, { running: 1 }) }, 0)
    s.handle({ type: 'peer-seen', peer: peer('slow', 1, 1) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('long', 40 * MINUTE)]) }, 10)
    // At speed 1 it takes 40 min, at 4 10 min: waiting up to 30 min for the fast one still pays.
    assert.deepEqual(steal(s, 'slow', 1, 10 + 30 * MINUTE - 1), [])
    assert.deepEqual(steal(s, 'slow', 1, 10 + 30 * MINUTE), ['long'])
  })

  it('does not keep a build from a slow thief when it ends before the rest of the work anyway', () => {
    // 200 one-minute jobs over 5 slots of speed 1 or 4: about 25 min of work left, and the
    // 10-minute job ends well within that even at speed 1.
    const jobs = [spec('mid', 10 * MINUTE), ...Array.from({ length: 200 }, (_, i) => spec(`s${i}`, MINUTE))]
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('fast', 4, 1, { running: 1 }) }, 0)
    s.handle({ type: 'peer-seen', peer: peer('slow', 1, 4) }, 0)
    s.handle({ type: 'submit', submission: submission(jobs) }, 10)
    assert.deepEqual(steal(s, 'slow', 1, 20 + FASTER_HOLD_MS), ['mid'])
  })

  it('does not keep a build for a faster machine that cannot build it', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('fast-arm', 4, 1, { capabilities: { systems: ['aarch64-linux'], features: [], mandatoryFeatures: [] } }) }, 0)
    s.handle({ type: 'peer-seen', peer: peer('slow', 1, 1) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('long', 40 * MINUTE)]) }, 10)
    assert.deepEqual(steal(s, 'slow', 1, 20), ['long'])
  })
})
