// End to end: workers that die or leave mid-build, on three test hosts with real Nix. A worker
// killed outright loses nothing (its lease lapses and the job is built elsewhere); a worker told
// to stop gives its jobs back at once.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { buildCounts, drvName, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle, type SubmitOutcome } from '../helpers/mesh-hosts.ts'
import { waitFor, within } from '../helpers/wait.ts'

const SLEEP_SECONDS = 8
const JOBS = 4

/** `JOBS` independent derivations that note their start in a shared file, then sleep. */
function sleepersExpr (tag: string, round: string, countFile: string): string {
  return `
let
  mk = i: derivation {
    name = "${round}-\${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      echo ${round}-\${toString i} >> ${countFile}
      echo ${tag} ${round} \${toString i} > $out
      /bin/sleep ${SLEEP_SECONDS}
    '' ];
  };
in builtins.listToAttrs (builtins.genList (i: { name = "j\${toString i}"; value = mk i; }) ${JOBS})`
}

describe('workers that fail mid-build', { timeout: 600_000 }, () => {
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
    for (const n of nodes) await stopNode(n, 'SIGKILL').catch(() => {})
    await net?.destroy()
  })

  /** Submits the sleepers of `round` on A; resolves once B builds one of them, with the submission still running. */
  async function submitUntilBBuilds (round: string): Promise<{ drvs: string[], onB: string, done: Promise<SubmitOutcome> }> {
    const [a, b] = nodes
    assert.ok(a !== undefined && b !== undefined)
    const drvs = await instantiateIn(net, a.host, sleepersExpr(tag, round, countFile), [0, 1, 2, 3].map(i => `j${i}`))
    assert.equal(drvs.length, JOBS)
    const done = submit(a, drvs)
    let onB = ''
    // B's status lists what it builds; its builder has started once the name is in the shared file.
    await waitFor(async () => {
      const building = (await status(b)).self.building.filter(p => drvs.includes(p))
      const started = await buildCounts(countFile)
      onB = building.find(p => started.has(drvName(p))) ?? ''
      return onB !== ''
    }, 60_000, `B to steal and start building one of the ${round} jobs`, 300)
    return { drvs, onB, done }
  }

  async function assertAllValidOnA (outcome: SubmitOutcome, drvs: string[]): Promise<void> {
    const [a] = nodes
    assert.ok(a !== undefined)
    assert.equal(outcome.code, 0, `submit failed: ${outcome.stderr}${outcome.stdout}`)
    assert.equal(outcome.report?.state, 'built')
    const results = outcome.report?.results ?? []
    assert.deepEqual(results.map(r => r.drvPath).sort(), [...drvs].sort())
    for (const r of results) {
      assert.equal(r.state, 'built', `${r.drvPath}: ${r.state}`)
      for (const out of Object.values(r.outputs)) {
        await a.host.execText('nix-store', ['--verify-path', out])
        const text = await a.host.execText('cat', [out])
        assert.match(text, new RegExp(`^${tag} `), `${out} holds what its builder wrote`)
      }
    }
  }

  it('a worker killed with SIGKILL mid-build loses nothing: its lease lapses and the job is built elsewhere', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    const { drvs, onB, done } = await submitUntilBBuilds('killed')
    const killedAt = Date.now()
    await stopNode(b, 'SIGKILL')
    // A dead machine's builds die with it: the orphaned nix-store and builder go too.
    b.host.signalAll('SIGKILL')

    const outcome = await within(done, 120_000, 'the submission to finish after B was killed')
    const recoveredIn = Date.now() - killedAt
    await assertAllValidOnA(outcome, drvs)
    const results = new Map((outcome.report?.results ?? []).map(r => [r.drvPath, r]))
    const rebuilt = results.get(onB)
    assert.ok(rebuilt?.builtBy === a.peerId || rebuilt?.builtBy === c.peerId, `${onB} built by ${rebuilt?.builtBy ?? 'nobody'}`)
    assert.ok([...results.values()].every(r => r.builtBy !== b.peerId), 'nothing is credited to the dead node')

    // B started it once, the survivor once more; every other job was built exactly once.
    const counts = await buildCounts(countFile)
    assert.equal(counts.get(drvName(onB)), 2, `${drvName(onB)} started ${counts.get(drvName(onB)) ?? 0} times`)
    for (const d of drvs.filter(d => d !== onB)) assert.equal(counts.get(drvName(d)), 1, `${drvName(d)} started ${counts.get(drvName(d)) ?? 0} times`)
    // The lease (6 s) has to lapse before the job moves, then it builds for 8 s.
    assert.ok(recoveredIn >= SLEEP_SECONDS * 1000, `recovered in ${recoveredIn} ms, faster than a rebuild takes`)
    console.log(`# SIGKILL: submission finished ${recoveredIn} ms after the worker died`)

    // A forgets the dead peer.
    await waitFor(async () => !(await status(a)).peers.some(p => p.peerId === b.peerId), 20_000, 'A to drop the dead peer', 500)
  })

  it('a worker stopped with SIGTERM mid-build gives its job back at once, and it is built elsewhere', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    nodes[1] = await startNode(net, b.host, { dataDir: b.dataDir, args: ['--max-jobs', '1'] })
    await waitForMesh(nodes)
    const { drvs, onB, done } = await submitUntilBBuilds('released')
    const stoppedAt = Date.now()
    const bNow = nodes[1]
    assert.ok(bNow !== undefined)
    await stopNode(bNow)

    // The owner hears of the release well before the 6 s lease could lapse.
    const aLog = (): Promise<string> => readFile(a.logFile, 'utf8')
    await waitFor(async () => (await aLog()).includes(`${bNow.peerId} gave back 1 job(s)`), 5_000, 'A to log that B gave its job back', 100)
    const releasedIn = Date.now() - stoppedAt

    const outcome = await within(done, 120_000, 'the submission to finish after B stopped')
    const finishedIn = Date.now() - stoppedAt
    await assertAllValidOnA(outcome, drvs)
    const rebuilt = (outcome.report?.results ?? []).find(r => r.drvPath === onB)
    assert.ok(rebuilt?.builtBy === a.peerId || rebuilt?.builtBy === c.peerId, `${onB} built by ${rebuilt?.builtBy ?? 'nobody'}`)
    const counts = await buildCounts(countFile)
    assert.equal(counts.get(drvName(onB)), 2, `${drvName(onB)} started ${counts.get(drvName(onB)) ?? 0} times`)
    console.log(`# SIGTERM: job given back ${releasedIn} ms after the stop; submission finished ${finishedIn} ms after it`)
  })
})
