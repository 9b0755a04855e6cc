// End to end on three test hosts with real Nix: faults a mesh must ride out without losing or
// doubling work. A worker frozen (SIGSTOP) past its lease, the owner killed outright (SIGKILL)
// and restarted, a worker's link cut past its lease: each job is built, imported once, and the
// late worker's builder is killed rather than left running beside the new one.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { randomBytes, randomInt } from 'node:crypto'
import { promisify } from 'node:util'
import { TestNetwork, type TestHost } from '../helpers/test-hosts.ts'
import { buildCounts, cli, drvName, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle, type SubmitOutcome } from '../helpers/mesh-hosts.ts'
import { waitFor, within } from '../helpers/wait.ts'
import { controlCall } from '../../node/control/control-client.ts'

const run = promisify(execFile)
/** Leases are 6 s in tests (startNode passes --lease-seconds 6). */
const LEASE_MS = 6_000

interface SleepJob { attr: string, name: string, seconds: number, marker: string }

/**
 * Derivations that note their start in the shared count file, then sleep. Each sleep has a
 * duration of its own (`<seconds>.<random>`), so its process can be found in a host by its
 * command line.
 */
function sleepJobs (tag: string, round: string, seconds: number[]): SleepJob[] {
  return seconds.map((s, i) => ({ attr: `j${i}`, name: `${round}-${i}`, seconds: s, marker: `/bin/sleep ${s}.${randomInt(100_000, 999_999)}` }))
}

function jobsExpr (tag: string, countFile: string, jobs: SleepJob[]): string {
  const one = (j: SleepJob): string => `${j.attr} = derivation {
    name = "${j.name}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      echo ${j.name} >> ${countFile}
      echo ${tag} ${j.name} > $out
      ${j.marker}
    '' ];
  };`
  return `{\n${jobs.map(one).join('\n')}\n}`
}

/** Processes in the host whose command line contains `marker`. */
function hostProcessesWith (host: TestHost, marker: string): number[] {
  return host.pids().filter(pid => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').includes(marker)
    } catch {
      return false
    }
  })
}

/** How often the owner imported each drv's outputs, from its log. */
async function importsOf (owner: MeshNodeHandle, drvPath: string): Promise<number> {
  const log = await readFile(owner.logFile, 'utf8')
  return log.split('\n').filter(l => l.includes(`${drvPath} built by `)).length
}

/** The derivations of a submission its owner holds as built (its control socket, from outside the host). */
async function builtJobs (owner: MeshNodeHandle, id: string): Promise<string[]> {
  const reply = await controlCall(owner.dataDir, { op: 'submission', id })
  const report = 'report' in reply ? reply.report : undefined
  return (report?.results ?? []).filter(r => r.state === 'built').map(r => r.drvPath)
}

/** The root-side end of a host's veth (test-hosts.ts names it `<run>-v<i>` for host `<run>-h<i>`). */
const rootVeth = (host: TestHost): string => host.name.replace(/-h(\d+)$/, '-v$1')

describe('faults: stopped worker, killed owner, cut link', { timeout: 600_000 }, () => {
  let net: TestNetwork
  let nodes: MeshNodeHandle[] = []
  let countFile: string
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    net = await TestNetwork.create({ hosts: 3 })
    countFile = join(net.sharedDir, 'builds')
    nodes = await Promise.all([0, 1, 2].map(async i => await startNode(net, net.host(i), { args: ['--max-jobs', '1'] })))
    await waitForMesh(nodes)
  })

  after(async () => {
    for (const h of net?.hosts ?? []) h.signalAll('SIGCONT')
    for (const n of nodes) await stopNode(n, 'SIGKILL').catch(() => {})
    await net?.destroy()
  })

  const node = (i: number): MeshNodeHandle => {
    const n = nodes[i]
    assert.ok(n !== undefined)
    return n
  }

  /**
   * Submits two sleepers on A (one slot): A builds one, a worker steals the other. Resolves once
   * a worker's builder runs, naming that worker (the victim) and the other (the spare).
   */
  async function submitUntilStolen (round: string, seconds: number): Promise<{ jobs: SleepJob[], drvs: string[], stolen: string, victim: number, spare: number, done: Promise<SubmitOutcome> }> {
    const a = node(0)
    const jobs = sleepJobs(tag, round, [seconds, seconds])
    const drvs = await instantiateIn(net, a.host, jobsExpr(tag, countFile, jobs), jobs.map(j => j.attr))
    const done = submit(a, drvs)
    let victim = -1
    let stolen = ''
    await waitFor(async () => {
      const started = await buildCounts(countFile)
      for (const i of [1, 2]) {
        const building = (await status(node(i))).self.building.filter(p => drvs.includes(p) && started.has(drvName(p)))
        if (building[0] !== undefined) { victim = i; stolen = building[0]; return true }
      }
      return false
    }, 60_000, `a worker to steal and start one of the ${round} jobs`, 300)
    return { jobs, drvs, stolen, victim, spare: victim === 1 ? 2 : 1, done }
  }

  function assertBuiltOnce (outcome: SubmitOutcome, drvs: string[]): void {
    assert.equal(outcome.code, 0, `submit failed: ${outcome.stderr}${outcome.stdout}`)
    assert.equal(outcome.report?.state, 'built')
    const results = outcome.report?.results ?? []
    // One result per derivation: nothing listed twice.
    assert.deepEqual(results.map(r => r.drvPath).sort(), [...drvs].sort())
    for (const r of results) assert.equal(r.state, 'built', `${r.drvPath}: ${r.state}`)
  }

  it('a worker stopped (SIGSTOP) past its lease: the job is built elsewhere, and after SIGCONT its builder is killed at once', async () => {
    const a = node(0)
    const SLEEP = 20
    const { jobs, drvs, stolen, victim, spare, done } = await submitUntilStolen('stopped', SLEEP)
    const v = node(victim)
    const marker = jobs.find(j => drvName(stolen) === j.name)?.marker ?? ''
    assert.equal(hostProcessesWith(v.host, marker).length > 0, true, 'the victim runs the builder')

    // Freeze the whole machine: node, nix-store and builder.
    v.host.signalAll('SIGSTOP')
    const stoppedAt = Date.now()
    // The spare takes the job once the lease lapses on the owner.
    await waitFor(async () => (await status(node(spare))).self.building.includes(stolen), LEASE_MS + 30_000, 'the spare worker to take over the job', 300)
    const reLeasedIn = Date.now() - stoppedAt
    await new Promise(resolve => setTimeout(resolve, Math.max(0, LEASE_MS + 4_000 - (Date.now() - stoppedAt))))
    assert.ok(hostProcessesWith(v.host, marker).length > 0, 'the frozen builder is still there before SIGCONT')
    v.host.signalAll('SIGCONT')
    const resumedAt = Date.now()

    // The worker's own clock says the lease is gone: it kills the builder without asking anyone.
    await waitFor(() => hostProcessesWith(v.host, marker).length === 0, 10_000, 'the late builder on the resumed worker to be killed', 50)
    const killedIn = Date.now() - resumedAt
    assert.match(await readFile(v.logFile, 'utf8'), new RegExp(`aborting the build of ${stolen.replace(/[.]/g, '\\.')}`))

    const outcome = await within(done, 120_000, 'the submission to finish')
    assertBuiltOnce(outcome, drvs)
    const result = (outcome.report?.results ?? []).find(r => r.drvPath === stolen)
    assert.equal(result?.builtBy, node(spare).peerId, 'the spare built it')
    assert.equal(await importsOf(a, stolen), 1, 'the owner imported it once')
    const counts = await buildCounts(countFile)
    assert.equal(counts.get(drvName(stolen)), 2, 'started on the victim and on the spare, no more')
    // Its builder is gone for good: the victim reports nothing and offers nothing later.
    await waitFor(async () => (await status(v)).self.running === 0, 10_000, 'the victim to be idle again', 300)
    console.log(`# SIGSTOP: job re-leased ${reLeasedIn} ms after the stop; late builder killed ${killedIn} ms after SIGCONT`)
  })

  it('the owner killed (SIGKILL) mid-submission and restarted: the submission completes and nothing finished is rebuilt', async () => {
    const a = node(0)
    // Quick jobs finish first; long ones are running when the owner dies.
    const jobs = sleepJobs(tag, 'ownerkill', [1, 1, 1, 10, 10, 10])
    const drvs = await instantiateIn(net, a.host, jobsExpr(tag, countFile, jobs), jobs.map(j => j.attr))
    const sub = await cli(a, ['submit', '-', '--detach'], drvs.join('\n') + '\n')
    assert.equal(sub.code, 0, sub.stderr)
    const id = sub.stdout.trim()
    let finished: string[] = []
    await waitFor(async () => {
      finished = await builtJobs(a, id)
      return finished.length >= 2
    }, 90_000, 'two jobs to finish before the owner is killed', 200)
    // The machine dies: the node and its own builder, with no chance to write anything more.
    a.host.signalAll('SIGKILL')
    await waitFor(() => a.child.exitCode !== null || a.child.signalCode !== null, 10_000, 'the owner to die')
    const killedAt = Date.now()
    nodes[0] = await startNode(net, a.host, { dataDir: a.dataDir, args: ['--max-jobs', '1'] })
    const restarted = node(0)
    await waitFor(async () => (await status(restarted)).submissions.find(x => x.id === id)?.state === 'built', 180_000, `submission ${id} to finish after the restart`, 500)
    const finishedIn = Date.now() - killedAt

    const counts = await buildCounts(countFile)
    for (const d of finished) assert.equal(counts.get(drvName(d)), 1, `${drvName(d)} had finished before the kill and was not rebuilt`)
    let rebuilt = 0
    for (const j of jobs) rebuilt += Math.max(0, (counts.get(j.name) ?? 0) - 1)
    for (const d of drvs) {
      const out = (await restarted.host.execText('nix-store', ['--query', '--outputs', d])).trim()
      await restarted.host.execText('nix-store', ['--verify-path', out])
      assert.match(await restarted.host.execText('cat', [out]), new RegExp(`^${tag} `))
      assert.ok(await importsOf(restarted, d) <= 1, `${d} imported at most once`)
    }
    // The same list again: everything is there already; submit exits 0 with every job built.
    const again = await submit(restarted, drvs)
    assert.equal(again.code, 0, again.stderr)
    assert.equal(again.report?.state, 'built')
    const after = await buildCounts(countFile)
    assert.deepEqual([...after], [...counts], 'nothing was built for the second submission')
    console.log(`# owner SIGKILL: submission finished ${finishedIn} ms after the kill; ${finished.length} finished before it, none rebuilt; ${rebuilt} unfinished job(s) started again`)
  })

  it('a worker cut off (link down) past its lease: its job is built elsewhere, it comes back without a duplicate, and the mesh works on', async () => {
    const a = node(0)
    const SLEEP = 15
    const { jobs, drvs, stolen, victim, spare, done } = await submitUntilStolen('cut', SLEEP)
    const v = node(victim)
    const marker = jobs.find(j => drvName(stolen) === j.name)?.marker ?? ''
    const veth = rootVeth(v.host)
    await run('ip', ['link', 'set', 'dev', veth, 'down'])
    const cutAt = Date.now()
    let restored = false
    try {
      await waitFor(async () => (await status(node(spare))).self.building.includes(stolen), LEASE_MS + 30_000, 'the spare worker to take over the job', 300)
      // Cut off, the worker cannot confirm its lease: it stops the build itself.
      await waitFor(() => hostProcessesWith(v.host, marker).length === 0, LEASE_MS + 10_000, 'the cut-off worker to kill its builder', 100)
      const killedIn = Date.now() - cutAt
      await new Promise(resolve => setTimeout(resolve, Math.max(0, 2 * LEASE_MS - (Date.now() - cutAt))))
      await run('ip', ['link', 'set', 'dev', veth, 'up'])
      restored = true
      const cutMs = Date.now() - cutAt
      const outcome = await within(done, 120_000, 'the submission to finish')
      assertBuiltOnce(outcome, drvs)
      assert.equal((outcome.report?.results ?? []).find(r => r.drvPath === stolen)?.builtBy, node(spare).peerId)
      assert.equal(await importsOf(a, stolen), 1, 'the owner imported it once')
      assert.equal((await buildCounts(countFile)).get(drvName(stolen)), 2)
      console.log(`# link cut: ${cutMs} ms down; the cut-off worker killed its builder ${killedIn} ms after the cut`)
    } finally {
      if (!restored) await run('ip', ['link', 'set', 'dev', veth, 'up']).catch(() => {})
    }

    // Back on the LAN: nothing is stuck, and new work spreads over all three hosts again.
    await waitForMesh(nodes, 60_000)
    for (const n of nodes) assert.equal((await status(n)).self.running, 0, `${n.host.name} holds no stale build`)
    const more = sleepJobs(tag, 'after-cut', [2, 2, 2, 2, 2, 2, 2, 2, 2])
    const moreDrvs = await instantiateIn(net, a.host, jobsExpr(tag, countFile, more), more.map(j => j.attr))
    const second = await within(submit(a, moreDrvs), 180_000, 'the submission after the cut')
    assertBuiltOnce(second, moreDrvs)
    const builders = new Set((second.report?.results ?? []).map(r => r.builtBy))
    assert.ok(builders.has(v.peerId), `the worker that was cut off builds again (built by: ${[...builders].join(', ')})`)
    for (const d of moreDrvs) assert.ok(await importsOf(a, d) <= 1)

    // Exit codes as documented: a failing job makes submit exit 1 and name it.
    const [broken] = await instantiateIn(net, a.host, `{ broken = derivation { name = "broken-${tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo gives up; exit 1" ]; }; }`, ['broken'])
    assert.ok(broken !== undefined)
    const failed = await submit(a, [broken])
    assert.equal(failed.code, 1)
    assert.equal(failed.report?.state, 'failed')
    assert.equal(failed.report?.results[0]?.state, 'failed')
  })
})
