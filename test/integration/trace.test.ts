// `join --trace`: two real nodes on loopback (this machine's Nix store), each writing its trace
// file; A owns a submission, B steals part of it. The files must be valid Chrome trace JSON once
// the nodes stop, every job must show its life on the node where it happened, in time order, and
// bench/trace-report.ts must read the two files as one timeline.
import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { MeshNode } from '../../node/mesh/mesh-node.ts'
import { FileJobTrace, type TraceEvent } from '../../node/mesh/job-trace.ts'
import { createLogger } from '../../node/log.ts'
import { parseTrace, traceReport } from '../../bench/trace-report.ts'
import { shDrv, instantiate, tempDir } from '../helpers/nix.ts'
import { waitFor } from '../helpers/wait.ts'
import { startLoopbackNode } from '../helpers/loopback-mesh.ts'

const SECRET = 'trace-test'
const JOBS = 4

describe('join --trace', { timeout: 240_000 }, () => {
  const nodes: MeshNode[] = []
  let cleanup: (() => Promise<void>) | undefined
  after(async () => {
    for (const n of nodes) await n.stop().catch(() => {})
    await cleanup?.()
  })

  it('writes every job\'s phases on the node where they happened, in order, readable as one timeline', async () => {
    const t = await tempDir('meshbuild-trace-')
    cleanup = t.cleanup
    const dir = t.dir
    const fileA = join(dir, 'a.json')
    const fileB = join(dir, 'b.json')
    const a = await startLoopbackNode(join(dir, 'a'), SECRET, { log: createLogger('a', 'error'), trace: new FileJobTrace(fileA) })
    nodes.push(a)
    const b = await startLoopbackNode(join(dir, 'b'), SECRET, {
      log: createLogger('b', 'error'), trace: new FileJobTrace(fileB), maxJobs: 2,
      bootstrap: [a.network.addresses()[0] ?? assert.fail('A listens nowhere')]
    })
    nodes.push(b)
    await waitFor(() => a.status().peers.some(p => p.peerId === b.peerId) && b.status().peers.some(p => p.peerId === a.peerId), 20_000, 'A and B to hear each other')

    const tag = randomBytes(6).toString('hex')
    const names = Array.from({ length: JOBS }, (_, i) => `j${i}`)
    const expr = `{ ${names.map(n => `${n} = ${shDrv(`trace-${n}-${tag}`, `/bin/sleep 2; echo ${n} ${tag} > $out`)};`).join(' ')} }`
    const drvs = await instantiate(expr, dir, names)
    const started = Date.now()
    const id = await a.submit(drvs, { priority: 0 })
    await waitFor(() => a.submissionReport(id)?.state === 'built', 180_000, 'the submission to finish')
    const wallMs = Date.now() - started
    const report = a.submissionReport(id)
    const stolen = report?.results.filter(r => r.builtBy === b.peerId).map(r => r.drvPath) ?? []
    assert.ok(stolen.length > 0, 'B stole none of the jobs: the test needs a stolen job to check')

    for (const n of nodes.splice(0)) await n.stop()
    // Closed files are plain JSON arrays.
    const eventsA = JSON.parse(await readFile(fileA, 'utf8')) as TraceEvent[]
    const eventsB = JSON.parse(await readFile(fileB, 'utf8')) as TraceEvent[]
    const named = (events: TraceEvent[]): string | undefined => events.find(e => e.ph === 'M')?.args.name as string | undefined
    assert.match(named(eventsA) ?? '', new RegExp(a.peerId.slice(-8)))
    assert.match(named(eventsB) ?? '', new RegExp(b.peerId.slice(-8)))

    const phases = (events: TraceEvent[], drv: string): Array<{ name: string, ts: number }> =>
      events.filter(e => e.ph === 'i' && e.args.drv === drv).map(e => ({ name: e.name, ts: e.ts }))
    for (const drv of drvs) {
      const onA = phases(eventsA, drv)
      const onB = phases(eventsB, drv)
      const builtOn = stolen.includes(drv) ? onB : onA
      const other = stolen.includes(drv) ? onA : onB
      assert.equal(builtOn.filter(p => p.name === 'build-started').length, 1, `${drv}: one build-started where it was built`)
      assert.equal(builtOn.filter(p => p.name === 'build-finished').length, 1, `${drv}: one build-finished where it was built`)
      assert.equal(other.filter(p => p.name === 'build-started').length, 0, `${drv}: no build on the other node`)
      const order = stolen.includes(drv)
        ? [['ready', onA], ['granted', onA], ['inputs-fetched', onB], ['build-started', onB], ['build-finished', onB], ['result-received', onA], ['outputs-imported', onA], ['built', onA]] as const
        : [['ready', onA], ['build-started', onA], ['build-finished', onA], ['built', onA]] as const
      let last = 0
      for (const [name, where] of order) {
        const at = where.find(p => p.name === name)?.ts
        assert.ok(at !== undefined, `${drv}: no ${name} in the trace of the node where it happens`)
        assert.ok(at >= last, `${drv}: ${name} comes before the phase preceding it`)
        last = at
      }
    }

    const merged = traceReport([...parseTrace(await readFile(fileA, 'utf8')), ...parseTrace(await readFile(fileB, 'utf8'))])
    assert.equal(merged.jobs, JOBS)
    assert.ok(merged.makespanMs > 0 && merged.makespanMs <= wallMs + 1_000, `trace makespan ${merged.makespanMs} ms against ${wallMs} ms measured`)
    const build = merged.gaps.find(g => g.gap === 'build-started→build-finished')
    assert.equal(build?.jobs, JOBS)
    assert.ok((build?.meanMs ?? 0) >= 1_900, `a 2 s build took ${build?.meanMs} ms in the trace`)
  })
})
