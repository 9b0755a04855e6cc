// End to end: `submit --check-reproducible` on three test hosts with real Nix. Every derivation
// is built on two different hosts; equal NAR hashes admit the outputs, different ones fail the
// derivation as not deterministic (exit 104), import nothing and build none of its dependents.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { cli, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { waitFor, within } from '../helpers/wait.ts'

/** Read by builders (the sandbox is off in test hosts): which host a build ran on. */
const HOST_FILE = '/nix/mbt-host-name'
const NOT_DETERMINISTIC = 104

/** Each builder notes `<name> <host>` in the shared file before writing its output. */
function note (name: string, countFile: string): string {
  return `echo ${name} $(/bin/cat ${HOST_FILE}) >> ${countFile}`
}

/** A diamond whose outputs depend only on its inputs: base -> left, right -> top. */
function diamondExpr (tag: string, countFile: string): string {
  const mk = (name: string, inputs: string[]): string => `${name} = derivation {
    name = "${tag}-${name}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      ${note(name, countFile)}
      { echo ${tag} ${name}; ${inputs.map(i => `/bin/cat \${${i}}`).join('; ')}${inputs.length > 0 ? ';' : ''} } > $out
    '' ];
  };`
  return `rec {
  ${mk('base', [])}
  ${mk('left', ['base'])}
  ${mk('right', ['base'])}
  ${mk('top', ['left', 'right'])}
}`
}

/** `noisy` writes random bytes, so two builds differ; `after` depends on it. */
function noisyExpr (tag: string, countFile: string): string {
  return `rec {
  noisy = derivation {
    name = "${tag}-noisy";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      ${note('noisy', countFile)}
      /usr/bin/head -c 32 /dev/urandom | /usr/bin/od -An -tx1 > $out
    '' ];
  };
  after = derivation {
    name = "${tag}-after";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      ${note('after', countFile)}
      /bin/cat \${noisy} > $out
    '' ];
  };
}`
}

/** name -> hosts it was built on, in order. */
async function buildsByName (file: string): Promise<Map<string, string[]>> {
  const builds = new Map<string, string[]>()
  const text = await readFile(file, 'utf8').catch(() => '')
  for (const line of text.split('\n').filter(l => l !== '')) {
    const [name = '', host = ''] = line.split(' ')
    builds.set(name, [...(builds.get(name) ?? []), host])
  }
  return builds
}

describe('submit --check-reproducible', { timeout: 600_000 }, () => {
  let net: TestNetwork
  let nodes: MeshNodeHandle[] = []
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    net = await TestNetwork.create({ hosts: 3 })
    for (let i = 0; i < 3; i++) await writeFile(join(net.host(i).nixDir, 'mbt-host-name'), `${net.host(i).name}\n`)
    nodes = await Promise.all([0, 1, 2].map(async i => await startNode(net, net.host(i), { args: ['--max-jobs', '1'] })))
    await waitForMesh(nodes)
  })

  after(async () => {
    for (const n of nodes) await stopNode(n, 'SIGKILL').catch(() => {})
    await net?.destroy()
  })

  it('builds every derivation of a deterministic DAG on two different hosts and admits it', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    const countFile = join(net.sharedDir, 'diamond-builds')
    const drvs = await instantiateIn(net, a.host, diamondExpr(tag, countFile), ['top'])
    const outcome = await submit(a, drvs, ['--check-reproducible'])
    assert.equal(outcome.code, 0, `submit failed: ${outcome.stderr}${outcome.stdout}`)
    assert.equal(outcome.report?.state, 'built')
    const results = outcome.report?.results ?? []
    assert.equal(results.length, 4)

    // Each derivation ran exactly twice, on two different hosts.
    const builds = await buildsByName(countFile)
    for (const name of ['base', 'left', 'right', 'top']) {
      const hosts = builds.get(name) ?? []
      assert.equal(hosts.length, 2, `${name} built on ${hosts.join(', ') || 'no host'}`)
      assert.notEqual(hosts[0], hosts[1], `${name} built twice on ${hosts[0] ?? '?'}`)
    }
    // The report names both builders and their agreeing hashes.
    const peers = new Set(nodes.map(n => n.peerId))
    for (const r of results) {
      assert.equal(r.state, 'built', `${r.drvPath}: ${r.state} ${r.failure?.message ?? ''}`)
      const checkBuilds = r.check?.builds ?? []
      assert.equal(checkBuilds.length, 2, `${r.drvPath}: ${checkBuilds.length} builds reported`)
      const [first, second] = checkBuilds
      assert.ok(first !== undefined && second !== undefined)
      assert.notEqual(first.builtBy, second.builtBy)
      assert.ok(peers.has(first.builtBy) && peers.has(second.builtBy))
      assert.deepEqual(first.narHashes, second.narHashes)
      for (const out of Object.values(r.outputs)) await a.host.execText('nix-store', ['--verify-path', out])
    }
    const top = results.find(r => r.requested)
    const text = await a.host.execText('cat', [top?.outputs.out ?? ''])
    assert.equal(text, `${tag} top\n${tag} left\n${tag} base\n${tag} right\n${tag} base\n`)

    // Workers queued nothing for the signer; the owner queued each agreed output itself.
    assert.equal((await status(a)).signQueue, 4)
    assert.equal((await status(b)).signQueue, 0)
    assert.equal((await status(c)).signQueue, 0)
  })

  it('fails a derivation whose two builds differ as not deterministic, imports none of it and builds no dependent', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    const countFile = join(net.sharedDir, 'noisy-builds')
    const [afterDrv = ''] = await instantiateIn(net, a.host, noisyExpr(tag, countFile), ['after'])
    const outcome = await submit(a, [afterDrv], ['--check-reproducible'])
    assert.equal(outcome.code, NOT_DETERMINISTIC, `submit exited ${outcome.code}: ${outcome.stderr}${outcome.stdout}`)
    assert.equal(outcome.report?.state, 'failed')
    const results = outcome.report?.results ?? []
    const noisy = results.find(r => !r.requested)
    const after = results.find(r => r.requested)
    assert.ok(noisy !== undefined && after !== undefined)
    assert.equal(noisy.state, 'failed')
    assert.equal(noisy.failure?.kind, 'not-deterministic')
    const checkBuilds = noisy.check?.builds ?? []
    assert.equal(checkBuilds.length, 2)
    const [first, second] = checkBuilds
    assert.ok(first !== undefined && second !== undefined)
    assert.notEqual(first.builtBy, second.builtBy)
    assert.notEqual(first.narHashes.out, second.narHashes.out)
    for (const x of [first.builtBy, second.builtBy, first.narHashes.out ?? '?', second.narHashes.out ?? '?']) {
      assert.ok(noisy.failure?.message.includes(x), `the failure names ${x}: ${noisy.failure?.message ?? ''}`)
    }
    assert.equal(after.state, 'dependency-failed')

    // Built twice on two hosts; its dependent never started.
    const builds = await buildsByName(countFile)
    const hosts = builds.get('noisy') ?? []
    assert.equal(hosts.length, 2, `noisy built on ${hosts.join(', ')}`)
    assert.notEqual(hosts[0], hosts[1])
    assert.equal(builds.get('after'), undefined, 'the dependent was not built')

    // Nothing of it stays in the owner's store: not imported, and the copy it built is deleted.
    const out = noisy.outputs.out ?? ''
    const builtOnA = checkBuilds.some(x => x.builtBy === a.peerId)
    if (builtOnA) assert.match(noisy.failure?.message ?? '', /copy built here is deleted/)
    await waitFor(async () => (await a.host.exec('nix-store', ['--check-validity', out])).code !== 0,
      20_000, `${out} to be invalid in the owner's store`, 200)
    // Not queued for the signer by anyone.
    assert.equal((await status(a)).signQueue, 4, 'the owner queued nothing more')
    assert.equal((await status(b)).signQueue, 0)
    assert.equal((await status(c)).signQueue, 0)
    console.log(`# not deterministic: built on ${hosts.join(' and ')}; owner built a copy: ${builtOnA}`)

    // Submitted again, as a user would read it: a new submission tries the failed job afresh.
    const human = await cli(a, ['submit', '-', '--check-reproducible'], `${afterDrv}\n`)
    assert.equal(human.code, NOT_DETERMINISTIC, human.stderr)
    assert.match(human.stderr, /error: \/nix\/store\/\S+-noisy\.drv is not deterministic \(exit code 104\):/)
    assert.equal([...human.stderr.matchAll(/^ {2}built by \S+: out sha256:[0-9a-z]+$/gm)].length, 2, human.stderr)
    assert.match(human.stderr, /not built: \S+-after\.drv/)
    assert.equal(human.stdout, '', 'no output path is printed')
  })

  it('with one capable peer, waits for a second builder and says so, then completes when one joins', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    await stopNode(b)
    await stopNode(c)
    const countFile = join(net.sharedDir, 'lonely-builds')
    const expr = `derivation {
      name = "${tag}-lonely";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" ''
        ${note('lonely', countFile)}
        echo ${tag} lonely > $out
      '' ];
    }`
    const drvs = await instantiateIn(net, a.host, expr, [])
    const done = submit(a, drvs, ['--check-reproducible'])
    await waitFor(async () => (await status(a)).submissions.some(x => x.awaitingSecondBuilder === 1), 60_000, 'A to report a job awaiting a second builder', 300)
    const shown = await cli(a, ['status'], undefined, 20_000)
    assert.match(shown.stdout, /1 job\(s\) built once, awaiting a second builder/)
    assert.deepEqual((await buildsByName(countFile)).get('lonely'), [a.host.name], 'built once, on A')

    // A second peer joins: it builds the job, the hashes agree, the submission completes.
    nodes[1] = await startNode(net, b.host, { dataDir: b.dataDir, args: ['--max-jobs', '1'] })
    const outcome = await within(done, 120_000, 'the submission to finish once B is back')
    assert.equal(outcome.code, 0, `submit failed: ${outcome.stderr}${outcome.stdout}`)
    assert.deepEqual((await buildsByName(countFile)).get('lonely'), [a.host.name, b.host.name])
    const r = outcome.report?.results[0]
    assert.deepEqual(r?.check?.builds.map(x => x.builtBy), [a.peerId, nodes[1].peerId])
    assert.equal(r?.check?.awaiting, undefined)
  })
})
