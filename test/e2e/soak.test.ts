// Soak: many short jobs across three test hosts while a random worker (never the owner) is
// killed outright (SIGKILL, with its builds: the machine dies) and restarted every ~10 s. Every
// job must complete, each output must be imported once and cached once, and no host's store may
// hold a path that fails verification.
//
// Size: MESHBUILD_SOAK_JOBS (default 200, what `npm test` runs; `npm run soak` runs 500).
// MESHBUILD_SOAK_KILL_SECONDS: the mean time between kills (default 10).
// MESHBUILD_SOAK_REPORT=FILE: also write the figures there as JSON.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes, randomInt } from 'node:crypto'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { buildCounts, generateKey, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle, type SubmitOutcome } from '../helpers/mesh-hosts.ts'
import { waitFor, within } from '../helpers/wait.ts'

const JOBS = positiveInt(process.env.MESHBUILD_SOAK_JOBS, 200)
const KILL_EVERY_MS = positiveInt(process.env.MESHBUILD_SOAK_KILL_SECONDS, 10) * 1000
/** A killed worker stays down this long before it restarts (with the same data dir). */
const DOWN_MS = 1_500
const MAX_JOBS = 2
const CACHE_PORT = 20_000 + randomInt(0, 20_000)

function positiveInt (v: string | undefined, fallback: number): number {
  const n = Number(v)
  return Number.isInteger(n) && n > 0 ? n : fallback
}

/**
 * JOBS derivations that note their start in the count file and sleep 0.2–1.2 s; every 7th
 * depends on the one ten before it, so the DAG has chains and inputs travel between hosts.
 */
function soakExpr (tag: string, countFile: string): string {
  const lines: string[] = []
  for (let i = 0; i < JOBS; i++) {
    const sleep = (0.2 + randomInt(0, 1000) / 1000).toFixed(3)
    const dep = i >= 10 && i % 7 === 0 ? `/bin/cat \${j${i - 10}} > /dev/null; ` : ''
    lines.push(`  j${i} = derivation { name = "soak-${i}"; system = builtins.currentSystem; builder = "/bin/sh"; ` +
      `args = [ "-c" "echo soak-${i} >> ${countFile}; ${dep}/bin/sleep ${sleep}; echo ${tag} ${i} > $out" ]; };`)
  }
  return `rec {\n${lines.join('\n')}\n  all = [ ${Array.from({ length: JOBS }, (_, i) => `j${i}`).join(' ')} ];\n}`
}

describe(`soak: ${JOBS} jobs while workers are killed every ~${KILL_EVERY_MS / 1000} s`, { timeout: 600_000 + JOBS * 3_000 }, () => {
  let net: TestNetwork
  const nodes: MeshNodeHandle[] = []
  let countFile: string
  let cacheDir: string
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    net = await TestNetwork.create({ hosts: 3 })
    countFile = join(net.sharedDir, 'builds')
    cacheDir = join(net.sharedDir, 'cache')
    const { sec: cacheSec, pub: cachePub } = await generateKey(net, 'soak-cache-1')
    // Where workers are told which cache key to trust (a node ignores a signer it was not told of).
    const cacheKeyArgs = ['--cache-public-key', cachePub]
    const workerArgs = ['--max-jobs', String(MAX_JOBS), ...cacheKeyArgs]
    // Workers first: the signer trusts exactly their node keys (and its own).
    const workers = await Promise.all([1, 2].map(async i => await startNode(net, net.host(i), { args: workerArgs })))
    const trusted = join(net.sharedDir, 'trusted-keys')
    const keys = await Promise.all(workers.map(async w => (await readFile(join(w.dataDir, 'signing-key.pub'), 'utf8')).trim()))
    await writeFile(trusted, keys.join('\n') + '\n')
    const owner = await startNode(net, net.host(0), {
      args: ['--max-jobs', String(MAX_JOBS), '--signer', '--cache-key', cacheSec, '--cache-listen', `0.0.0.0:${CACHE_PORT}`, '--cache-dir', cacheDir, '--trusted-keys', trusted, ...cacheKeyArgs]
    })
    nodes.push(owner, ...workers)
    await waitForMesh(nodes)
    workerArgsFor = workerArgs
  })
  let workerArgsFor: string[] = []

  after(async () => {
    for (const n of nodes) await stopNode(n, 'SIGKILL').catch(() => {})
    await net?.destroy()
  })

  it('every job completes, each output is imported once and cached once, and every store verifies', async () => {
    const owner = nodes[0]
    assert.ok(owner !== undefined)
    const drvs = await instantiateIn(net, owner.host, soakExpr(tag, countFile), ['all'])
    assert.equal(drvs.length, JOBS)

    const started = Date.now()
    const done = submit(owner, drvs)
    let finished = false
    let outcome: SubmitOutcome | undefined
    void done.then(() => { finished = true }, () => { finished = true })
    let kills = 0
    const killLog: string[] = []
    const killer = (async () => {
      // Kills are ~KILL_EVERY_MS apart from one to the next, the restart included.
      let next = started
      while (!finished) {
        next += KILL_EVERY_MS * (0.8 + Math.random() * 0.4)
        await new Promise(resolve => setTimeout(resolve, Math.max(0, next - Date.now())))
        if (finished) break
        const i = 1 + randomInt(0, 2)
        const victim = nodes[i]
        assert.ok(victim !== undefined)
        const running = (await status(victim).catch(() => undefined))?.self.running ?? -1
        victim.host.signalAll('SIGKILL')
        await stopNode(victim, 'SIGKILL').catch(() => {})
        kills++
        killLog.push(`${Math.round((Date.now() - started) / 1000)}s: killed ${victim.host.name} (${running} build(s) running)`)
        await new Promise(resolve => setTimeout(resolve, DOWN_MS))
        nodes[i] = await startNode(net, victim.host, { dataDir: victim.dataDir, args: workerArgsFor })
      }
    })()
    try {
      outcome = await within(done, 300_000 + JOBS * 3_000, `the ${JOBS} jobs to finish`)
    } finally {
      finished = true
      await killer
    }
    const durationMs = Date.now() - started

    // What the owner says: one result per job, all built.
    const results = outcome.report?.results ?? []
    const byDrv = new Map<string, number>()
    for (const r of results) byDrv.set(r.drvPath, (byDrv.get(r.drvPath) ?? 0) + 1)
    const duplicateResults = [...byDrv.values()].filter(n => n > 1).length
    const losses = drvs.filter(d => results.find(r => r.drvPath === d)?.state !== 'built')
    // What the owner did: each output imported at most once (its own builds are not imported).
    const ownerLog = await readFile(owner.logFile, 'utf8')
    const imports = new Map<string, number>()
    for (const m of ownerLog.matchAll(/(\/nix\/store\/\S+\.drv) built by \S+; fetched/g)) imports.set(m[1] ?? '', (imports.get(m[1] ?? '') ?? 0) + 1)
    const doubleImports = [...imports].filter(([, n]) => n > 1).map(([d]) => d)
    const counts = await buildCounts(countFile)
    let rebuilt = 0
    for (const n of counts.values()) rebuilt += n - 1
    const rebuiltJobs = [...counts.values()].filter(n => n > 1).length

    // The cache: every output exactly once, once the workers' sign queues have drained.
    const outputs = [...new Set(results.flatMap(r => Object.values(r.outputs)))]
    let cached = 0
    try {
      await waitFor(async () => {
        cached = (await status(owner)).signer?.paths ?? 0
        return cached >= outputs.length
      }, 120_000, `the cache to hold all ${outputs.length} outputs`, 1_000)
    } catch {}
    const narinfos = (await readdir(cacheDir)).filter(f => f.endsWith('.narinfo'))
    const missingFromCache = outputs.filter(o => !narinfos.includes(`${o.slice('/nix/store/'.length, '/nix/store/'.length + 32)}.narinfo`))

    // Every host's store: each registered path's contents match its recorded hash.
    const verify: string[] = []
    for (const h of net.hosts) {
      const r = await h.exec('nix-store', ['--verify', '--check-contents'], { timeoutMs: 300_000 })
      const bad = r.stderr.split('\n').filter(l => /modified|corrupt|invalid|error/i.test(l))
      verify.push(`${h.name}: exit ${r.code}${bad.length > 0 ? `, ${bad.slice(0, 5).join('; ')}` : ''}`)
      assert.equal(r.code, 0, `nix-store --verify --check-contents in ${h.name}: ${r.stderr}`)
      assert.deepEqual(bad, [], `${h.name}'s store verifies`)
    }

    const figures = {
      jobs: JOBS, kills, rebuiltJobs, rebuiltStarts: rebuilt, duplicateResults, doubleImports: doubleImports.length,
      losses: losses.length, outputs: outputs.length, cached, narinfos: narinfos.length, missingFromCache: missingFromCache.length,
      durationMs, verify, killLog
    }
    console.log(`# soak: ${JSON.stringify({ ...figures, killLog: undefined })}`)
    for (const k of killLog) console.log(`#   ${k}`)
    if (process.env.MESHBUILD_SOAK_REPORT !== undefined) await writeFile(process.env.MESHBUILD_SOAK_REPORT, JSON.stringify(figures, null, 2) + '\n')

    assert.equal(outcome.code, 0, `submit failed: ${outcome.stderr.slice(-4000)}`)
    assert.equal(outcome.report?.state, 'built')
    assert.equal(results.length, JOBS)
    assert.equal(duplicateResults, 0)
    assert.deepEqual(losses, [])
    assert.deepEqual(doubleImports, [], 'no output imported twice')
    assert.ok(kills >= Math.min(3, Math.floor(durationMs / KILL_EVERY_MS) - 1), `workers were killed (${kills})`)
    assert.deepEqual(missingFromCache, [], 'every output reached the cache')
    assert.equal(narinfos.length, outputs.length, 'one narinfo per output, nothing else')
  })
})
