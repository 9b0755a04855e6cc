// The build history end to end, on two real nodes on loopback (this machine's Nix store): A owns,
// B (speed factor 2) builds a derivation that sleeps 1 s; a new derivation of the same name (an
// env var changed, so another hash) is submitted with estimatedMs ≈ B's build time × 2, a new
// version with the package's time. A restarted owner still knows the times, and its own build
// (speed factor 3) is recorded × 3. `status` shows how many names the history holds.
import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { renderStatus } from '../../node/cli/commands/status.ts'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import type { MeshNode } from '../../node/mesh/mesh-node.ts'
import type { Scheduler } from '../../node/scheduler/scheduler.ts'
import { createLogger } from '../../node/log.ts'
import { shDrv, instantiate, tempDir } from '../helpers/nix.ts'
import { waitFor } from '../helpers/wait.ts'
import { startLoopbackNode } from '../helpers/loopback-mesh.ts'

const SECRET = 'build-history-test'

/** The job as the owner's scheduler holds it (the test reads the private field, as trust.test.ts does). */
const jobOf = (node: MeshNode, drvPath: string): ReturnType<Scheduler['job']> =>
  (node as unknown as { scheduler: Scheduler }).scheduler.job(drvPath)

describe('build history', { timeout: 120_000 }, () => {
  const nodes = new Set<MeshNode>()
  let cleanup: (() => Promise<void>) | undefined
  after(async () => {
    for (const n of nodes) await n.stop().catch(() => {})
    await cleanup?.()
  })

  it('submits a derivation built before under its name with the time it took, across a restart', async () => {
    const t = await tempDir('meshbuild-history-')
    cleanup = t.cleanup
    const dir = t.dir
    let a = await startLoopbackNode(join(dir, 'a'), SECRET, { log: createLogger('a', 'error'), maxJobs: 0 })
    nodes.add(a)
    const b = await startLoopbackNode(join(dir, 'b'), SECRET, {
      log: createLogger('b', 'error'), maxJobs: 1, speedFactor: 2,
      bootstrap: [a.network.addresses()[0] ?? assert.fail('A listens nowhere')]
    })
    nodes.add(b)
    await waitFor(() => a.status().peers.some(p => p.peerId === b.peerId && p.speedFactor === 2), 20_000, 'A to hear B')
    assert.equal(a.status().buildHistory?.names, 0)
    assert.match(renderStatus(a.status(), new Date()), /^Build times: none known yet/m)

    // A letter after the first dash: the package name is hist-t<hex>, the version what follows.
    const pkg = `hist-t${randomBytes(4).toString('hex')}`
    const drvOf = async (version: string, v: string): Promise<string> => {
      const [drv] = await instantiate(shDrv(`${pkg}-${version}`, '/bin/sleep 1; echo $v > $out', `v = "${v}";`), dir)
      return drv ?? assert.fail('no derivation')
    }
    const first = await drvOf('1.0', 'one')
    const started = Date.now()
    const id1 = await a.submit([first], { priority: 0 })
    assert.equal(jobOf(a, first)?.estimatedMs, undefined, 'a name never built has no estimate')
    await waitFor(() => a.submissionReport(id1)?.state === 'built', 60_000, 'the first build')
    const wallMs = Date.now() - started
    assert.equal(a.submissionReport(id1)?.results[0]?.builtBy, b.peerId, 'B built it (A has no slot)')
    assert.equal(a.status().buildHistory?.names, 1)

    // The same name, another derivation (the env var changed): B's time × its speed factor 2.
    const second = await drvOf('1.0', 'two')
    assert.notEqual(second, first)
    const id2 = await a.submit([second], { priority: 0 })
    const estimate = jobOf(a, second)?.estimatedMs ?? assert.fail('the second submission has no estimate')
    assert.ok(estimate >= 2 * 1000 && estimate <= 2 * wallMs, `estimate ${estimate} ms for a 1 s build at speed factor 2 (wall ${wallMs} ms)`)
    await waitFor(() => a.submissionReport(id2)?.state === 'built', 60_000, 'the second build')
    const version2 = await drvOf('2.0', 'three')
    const probe = await a.submit([version2], { priority: 0 })
    const byPackage = jobOf(a, version2)?.estimatedMs ?? assert.fail('a new version has no estimate')
    assert.ok(byPackage >= 2 * 1000 && byPackage <= 2 * wallMs, `package estimate ${byPackage} ms`)
    await waitFor(() => a.submissionReport(probe)?.state === 'built', 60_000, 'the new version\'s build')

    // Restarted, without B, with a slot of its own at speed factor 3: the times are still known.
    await b.stop()
    nodes.delete(b)
    await a.stop()
    nodes.delete(a)
    a = await startLoopbackNode(join(dir, 'a'), SECRET, { log: createLogger('a', 'error'), maxJobs: 1, speedFactor: 3 })
    nodes.add(a)
    assert.equal(a.status().buildHistory?.names, 2, 'hist-…-1.0 and hist-…-2.0')
    assert.match(renderStatus(a.status(), new Date()), /^Build times: 2 derivation name\(s\) known from earlier builds/m)
    const third = await drvOf('3.0', 'four')
    const localStart = Date.now()
    const id3 = await a.submit([third], { priority: 0 })
    const restored = jobOf(a, third)?.estimatedMs ?? assert.fail('no estimate after a restart')
    assert.ok(restored >= 2 * 1000 && restored <= 2 * wallMs, `estimate after restart ${restored} ms`)
    await waitFor(() => a.submissionReport(id3)?.state === 'built', 60_000, 'the local build')
    const localWall = Date.now() - localStart
    assert.equal(a.submissionReport(id3)?.results[0]?.builtBy, a.peerId)
    // Its own build, recorded at its own speed factor, is what the same name gets next.
    const fourth = await drvOf('3.0', 'five')
    await a.submit([fourth], { priority: 0 })
    const local = jobOf(a, fourth)?.estimatedMs ?? assert.fail('no estimate from the local build')
    assert.ok(local >= 3 * 1000 && local <= 3 * localWall, `estimate ${local} ms for a 1 s build at speed factor 3 (wall ${localWall} ms)`)
  })
})
