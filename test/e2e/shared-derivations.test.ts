// End to end: two owners submit the same derivations at once, and the mesh builds each of them
// once. The owner whose peer id sorts later defers a job the other claims (its offer lists the
// jobs it will build), then fetches the outputs from that owner once it no longer claims it.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { buildCounts, instantiateIn, startNode, stopNode, submit, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'

/** 20 derivations: 8 leaves, 8 on two leaves each, 4 on two of those; each appends its name to `countFile` when it starts. */
function sharedExpr (tag: string, countFile: string): string {
  return `
let
  mk = { name, deps ? [] }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      echo \${name} >> ${countFile}
      echo ${tag} \${name} > $out
      for d in \${toString deps}; do /bin/cat $d >> $out; done
      /bin/sleep 1
    '' ];
  };
  leaves = builtins.genList (i: mk { name = "leaf-\${toString i}"; }) 8;
  mids = builtins.genList (i: mk { name = "mid-\${toString i}"; deps = [ (builtins.elemAt leaves i) (builtins.elemAt leaves (7 - i)) ]; }) 8;
  tops = builtins.genList (i: mk { name = "top-\${toString i}"; deps = [ (builtins.elemAt mids (2 * i)) (builtins.elemAt mids (2 * i + 1)) ]; }) 4;
in { inherit tops; }`
}

describe('two owners submitting the same derivations at once', { timeout: 300_000 }, () => {
  let net: TestNetwork
  let nodes: MeshNodeHandle[] = []
  let countFile: string
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    net = await TestNetwork.create({ hosts: 3 })
    nodes = await Promise.all([0, 1, 2].map(async i => await startNode(net, net.host(i), { args: ['--max-jobs', '2'] })))
    await waitForMesh(nodes)
    countFile = join(net.sharedDir, 'builds')
  })

  after(async () => {
    await Promise.allSettled(nodes.map(async n => { await stopNode(n) }))
    await net?.destroy()
  })

  it('builds each of the 20 once, and both submissions end with every output valid in their stores', async () => {
    const expr = sharedExpr(tag, countFile)
    // The same expression instantiated on both owners' hosts: the same .drv paths in each store.
    const [drvsA, drvsB] = await Promise.all([0, 1].map(async i => await instantiateIn(net, net.host(i), expr, ['tops'])))
    assert.deepEqual(drvsA, drvsB)
    const [a, b] = await Promise.all([submit(nodes[0]!, drvsA!), submit(nodes[1]!, drvsB!)])
    assert.equal(a.code, 0, a.stderr)
    assert.equal(b.code, 0, b.stderr)
    const counts = await buildCounts(countFile)
    assert.equal(counts.size, 20, `derivations that started: ${[...counts.keys()].join(', ')}`)
    const twice = [...counts].filter(([, n]) => n > 1).map(([name, n]) => `${name} ×${n}`)
    assert.deepEqual(twice, [], `built more than once: ${twice.join(', ')}`)
    for (const [i, drvs] of [[0, drvsA!], [1, drvsB!]] as const) {
      const outs = (await net.host(i).execText('nix-store', ['-q', '--outputs', ...drvs])).trim().split('\n')
      await net.host(i).execText('nix-store', ['--verify-path', ...outs])
    }
  })
})
