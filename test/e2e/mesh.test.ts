// End to end: real meshbuild nodes in three test hosts (own network namespace, own /nix store),
// finding each other by mDNS alone, building real derivations with real Nix.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { buildCounts, cli, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { execText } from '../../node/nix/exec.ts'
import { waitFor } from '../helpers/wait.ts'

/** Derivations whose builders append their name to a shared file, so tests can count builds. */
function dagExpr (tag: string, countFile: string): string {
  return `
let
  mk = { name, deps ? [], sleep ? 0, fail ? false, features ? [] }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    requiredSystemFeatures = features;
    args = [ "-c" ''
      echo \${name} >> ${countFile}
      echo "building \${name} (${tag})"
      echo ${tag} \${name} > $out
      for d in \${toString deps}; do /bin/cat $d >> $out; done
      /bin/sleep \${toString sleep}
      \${if fail then "echo 'the builder of \${name} gives up' >&2; exit 1" else ""}
    '' ];
  };
  base = mk { name = "base"; sleep = 1; };
  l1 = builtins.genList (i: mk { name = "l1-\${toString i}"; deps = [ base ]; sleep = 2; }) 4;
  l2 = builtins.genList (j: mk { name = "l2-\${toString j}"; deps = [ (builtins.elemAt l1 j) (builtins.elemAt l1 (if j == 3 then 0 else j + 1)) ]; sleep = 2; }) 4;
  l3 = [ (mk { name = "l3-0"; deps = [ (builtins.elemAt l2 0) (builtins.elemAt l2 1) ]; sleep = 1; })
         (mk { name = "l3-1"; deps = [ (builtins.elemAt l2 2) (builtins.elemAt l2 3) ]; sleep = 1; }) ];
  top = mk { name = "top"; deps = l3 ++ [ base ]; };
  broken = mk { name = "broken"; deps = [ base ]; fail = true; };
  afterBroken = mk { name = "after-broken"; deps = [ broken ]; };
  sibling = mk { name = "sibling"; deps = [ base ]; };
  big = mk { name = "needs-big"; features = [ "big" ]; };
  special = mk { name = "needs-special"; features = [ "special" ]; };
  plain = builtins.genList (i: mk { name = "plain-\${toString i}"; sleep = 1; }) 4;
  chain = builtins.genList (i: mk { name = "chain-\${toString i}"; sleep = 2; }) 1;
  c0 = mk { name = "c0"; sleep = 2; };
  c1 = mk { name = "c1"; deps = [ c0 ]; sleep = 2; };
  c2 = mk { name = "c2"; deps = [ c1 ]; sleep = 2; };
  c3 = mk { name = "c3"; deps = [ c2 ]; sleep = 2; };
in {
  inherit top broken afterBroken sibling big special c3;
  l1-0 = builtins.elemAt l1 0;
  plain0 = builtins.elemAt plain 0; plain1 = builtins.elemAt plain 1;
  plain2 = builtins.elemAt plain 2; plain3 = builtins.elemAt plain 3;
}`
}

describe('a mesh of three test hosts', { timeout: 600_000 }, () => {
  let net: TestNetwork
  let nodes: MeshNodeHandle[] = []
  let expr: string
  let countFile: string
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    net = await TestNetwork.create({ hosts: 3 })
    countFile = join(net.sharedDir, 'builds')
    expr = dagExpr(tag, countFile)
    nodes = await Promise.all([0, 1, 2].map(async i => await startNode(net, net.host(i), { args: ['--max-jobs', '2'] })))
    await waitForMesh(nodes)
  })

  after(async () => {
    for (const n of nodes) await stopNode(n).catch(() => {})
    await net?.destroy()
  })

  it('builds a DAG of 12 derivations across the hosts, outputs landing valid in the submitter\'s store', async () => {
    const [a] = nodes
    assert.ok(a !== undefined)
    const [top, l10] = await instantiateIn(net, a.host, expr, ['top', 'l1-0'])
    assert.ok(top !== undefined && l10 !== undefined)
    const r = await submit(a, [top, l10])
    assert.equal(r.code, 0, `submit failed: ${r.stderr}${r.stdout}`)
    assert.equal(r.report?.state, 'built')
    const results = r.report?.results ?? []
    assert.equal(results.length, 12, 'the DAG has 12 derivations')
    assert.ok(results.every(x => x.state === 'built'), JSON.stringify(results.map(x => [x.drvPath, x.state])))
    const builders = new Set(results.map(x => x.builtBy))
    assert.ok(builders.size >= 2, `only ${[...builders].join(', ')} built`)

    // Every requested output is valid in A's store, with the NAR hash a local build gives.
    const requested = results.filter(x => x.requested).flatMap(x => Object.values(x.outputs))
    assert.equal(requested.length, 2)
    for (const out of requested) {
      await a.host.execText('nix-store', ['--verify-path', out])
      const meshHash = (await a.host.execText('nix-store', ['--query', '--hash', out])).trim()
      const localOut = (await execText('nix-store', ['--realise', await localDrvFor(out, expr)])).trim()
      assert.equal(localOut, out, 'the same derivation gives the same output path')
      const localHash = (await execText('nix-store', ['--query', '--hash', localOut])).trim()
      assert.equal(meshHash, localHash, `${out}: NAR hash differs between the mesh build and a local build`)
    }
    assert.match(r.stdout, new RegExp(top.replace(/\.drv$/, '').slice(44)))

    // An output copied from the peer that built it keeps that peer's signature in A's store, as
    // `nix copy` keeps it (node keys are named <hostname>-<last 8 of the peer id>).
    const fromPeers = results.filter(x => x.builtBy !== a.peerId && x.builtBy !== undefined)
    assert.ok(fromPeers.length > 0, 'some job was built by another host')
    for (const x of fromPeers) {
      for (const out of Object.values(x.outputs)) {
        const sigs = (await a.host.execText('nix', ['path-info', '--sigs', out])).trim()
        assert.match(sigs, new RegExp(`-${(x.builtBy ?? '').slice(-8)}:[A-Za-z0-9+/=]{88}`), `${out} in A's store, built by ${x.builtBy ?? '?'}: ${sigs}`)
      }
    }

    const s = await status(a)
    assert.deepEqual(s.peers.map(p => p.peerId).sort(), nodes.slice(1).map(n => n.peerId).sort())
    assert.ok(s.peers.every(p => p.systems.length > 0 && p.maxJobs === 2 && typeof p.speedFactor === 'number'))
    assert.equal(s.submissions.find(x => x.id === r.report?.id)?.state, 'built')
  })

  it('reports a failing builder with its log tail, skips its dependents and builds the rest', async () => {
    const [, b] = nodes
    assert.ok(b !== undefined)
    const [afterBroken, sibling, broken] = await instantiateIn(net, b.host, expr, ['afterBroken', 'sibling', 'broken'])
    assert.ok(afterBroken !== undefined && sibling !== undefined && broken !== undefined)
    const r = await submit(b, [afterBroken, sibling])
    assert.equal(r.code, 1)
    const results = new Map((r.report?.results ?? []).map(x => [x.drvPath, x]))
    assert.equal(results.get(broken)?.state, 'failed')
    assert.equal(results.get(broken)?.failure?.kind, 'build-failed')
    assert.ok(results.get(broken)?.failure?.logTail?.some(l => l.includes('the builder of broken gives up')))
    assert.equal(results.get(afterBroken)?.state, 'dependency-failed')
    assert.equal(results.get(sibling)?.state, 'built')

    // Without --json the user reads the failure, its log and what was not built.
    const plain = await cli(b, ['submit', '-'], `${afterBroken}\n`)
    assert.equal(plain.code, 1)
    assert.match(plain.stderr, new RegExp(`error: ${broken.replace(/[.]/g, '\\.')} failed`))
    assert.match(plain.stderr, /the builder of broken gives up/)
    assert.match(plain.stderr, /not built: .*after-broken\.drv: dependency .*broken\.drv failed/)
  })

  it('builds a derivation that requires a feature only where it is supported, and mandatory features only where required', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    await Promise.all([stopNode(b), stopNode(c)])
    nodes[1] = await startNode(net, b.host, { args: ['--max-jobs', '2', '--features', 'big'] })
    nodes[2] = await startNode(net, c.host, { args: ['--max-jobs', '2', '--mandatory-features', 'special'] })
    const [, big, special] = nodes
    assert.ok(big !== undefined && special !== undefined)
    await waitForMesh(nodes)
    const drvs = await instantiateIn(net, a.host, expr, ['big', 'special', 'plain0', 'plain1', 'plain2', 'plain3'])
    const r = await submit(a, drvs)
    assert.equal(r.code, 0, r.stderr + r.stdout)
    const byName = new Map((r.report?.results ?? []).map(x => [x.drvPath.replace(/^.*?-/, '').replace(/\.drv$/, ''), x.builtBy]))
    assert.equal(byName.get('needs-big'), big.peerId)
    assert.equal(byName.get('needs-special'), special.peerId)
    for (const i of [0, 1, 2, 3]) {
      assert.notEqual(byName.get(`plain-${i}`), special.peerId, `plain-${i} went to the node with a mandatory feature`)
    }
  })

  it('refuses a drv list with a bad line whole, naming the line', async () => {
    const [a] = nodes
    assert.ok(a !== undefined)
    const [top] = await instantiateIn(net, a.host, expr, ['top'])
    const r = await cli(a, ['submit', '-'], `# a comment\n${top ?? ''}\n\n/nix/store/not-a-store-path\n`)
    assert.equal(r.code, 1)
    assert.match(r.stderr, /<stdin>:4: not a store path/)
    const s = await status(a)
    assert.equal(s.submissions.length, 2, 'nothing new was submitted')
  })

  it('resumes a submission after its owner restarts, rebuilding nothing that finished', async () => {
    const [a] = nodes
    assert.ok(a !== undefined)
    const [c3] = await instantiateIn(net, a.host, expr, ['c3'])
    assert.ok(c3 !== undefined)
    const sub = await cli(a, ['submit', '-', '--detach'], `${c3}\n`)
    assert.equal(sub.code, 0, sub.stderr)
    const id = sub.stdout.trim()
    // Stop the owner once the first link of the chain is done.
    await waitFor(async () => (await buildCounts(countFile)).has('c1'), 60_000, 'c1 to start building')
    await stopNode(a)
    nodes[0] = await startNode(net, a.host, { dataDir: a.dataDir, args: ['--max-jobs', '2'] })
    const restarted = nodes[0]
    await waitFor(async () => (await status(restarted)).submissions.find(x => x.id === id)?.state === 'built', 120_000, `submission ${id} to finish after the restart`, 500)
    const counts = await buildCounts(countFile)
    assert.equal(counts.get('c0'), 1, 'c0 finished before the restart and was not rebuilt')
    const out = (await restarted.host.execText('nix-store', ['--query', '--outputs', c3])).trim()
    await restarted.host.execText('nix-store', ['--verify-path', out])
  })
})

/** The .drv of an output path, instantiated in this machine's own store from the same expression. */
async function localDrvFor (out: string, expr: string): Promise<string> {
  const { writeFile, mkdtemp } = await import('node:fs/promises')
  const { tmpdir } = await import('node:os')
  const dir = await mkdtemp(join(tmpdir(), 'mb-local-'))
  const file = join(dir, 'dag.nix')
  await writeFile(file, expr)
  const attrs = ['top', 'l1-0']
  for (const attr of attrs) {
    const drv = (await execText('nix-instantiate', [file, '-A', attr])).trim()
    const outs = (await execText('nix-store', ['--query', '--outputs', drv])).trim().split('\n')
    if (outs.includes(out)) return drv
  }
  throw new Error(`no attribute of the DAG builds ${out}`)
}
