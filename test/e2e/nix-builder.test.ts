// End to end: plain Nix on a test host builds through the mesh. Host A runs a node with
// --serve-builder; its Nix is told only `builders = @<A's machines file>` and `--max-jobs 0`, so
// every build goes through the socket; the node never builds those jobs itself (Nix holds their
// output locks in A's store), so peers B and C build them. Host D runs no node: plain Nix there
// builds the same derivations locally, for the NAR hashes to compare.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { TestNetwork, type HostExecResult, type TestHost } from '../helpers/test-hosts.ts'
import { cli, startNode, status, stopNode, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { builderPaths } from '../../node/builder/builder-paths.ts'
import { waitFor } from '../helpers/wait.ts'

function expr (tag: string): string {
  return `
let
  mk = { name, deps ? [], sleep ? 0, script ? "", features ? [] }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    requiredSystemFeatures = features;
    args = [ "-c" ''
      echo "building \${name} (${tag})"
      echo ${tag} \${name} > $out
      for d in \${toString deps}; do /bin/cat $d >> $out; done
      /bin/sleep \${toString sleep}
      \${script}
    '' ];
  };
  leaves = builtins.genList (i: mk { name = "leaf-\${toString i}"; sleep = 2; }) 4;
  mids = builtins.genList (i: mk { name = "mid-\${toString i}"; deps = [ (builtins.elemAt leaves i) (builtins.elemAt leaves (3 - i)) ]; sleep = 1; }) 4;
in {
  top = mk { name = "top"; deps = mids; };
  other = mk { name = "other"; deps = [ (mk { name = "other-dep"; sleep = 1; }) ]; };
  broken = mk { name = "broken"; script = "echo 'the builder of broken gives up' >&2; exit 1"; };
  slow = mk { name = "slow"; sleep = 30; };
  special = mk { name = "needs-special"; features = [ "special" ]; };
  killed = mk { name = "killed"; sleep = 12; };
}`
}

describe('plain Nix builds through the builder socket', { timeout: 600_000 }, () => {
  let net: TestNetwork
  let nodes: MeshNodeHandle[] = []
  let file: string
  let hostA: TestHost
  let machinesFile: string
  const tag = randomBytes(6).toString('hex')

  /** A plain Nix command on host A that may only use the mesh. */
  const viaMesh = async (cmd: string, args: string[], timeoutMs = 180_000): Promise<HostExecResult> =>
    await hostA.exec(cmd, [...args, '--option', 'builders', `@${machinesFile}`, '--max-jobs', '0'], { timeoutMs })

  const built = async (node: MeshNodeHandle): Promise<number> => (await status(node)).counters.built

  before(async () => {
    net = await TestNetwork.create({ hosts: 4 })
    hostA = net.host(0)
    file = join(net.sharedDir, 'builder-dag.nix')
    await writeFile(file, expr(tag))
    nodes = await Promise.all([0, 1, 2].map(async i => await startNode(net, net.host(i), {
      args: [...(i === 0 ? ['--serve-builder'] : []), '--max-jobs', '2']
    })))
    await waitForMesh(nodes)
    machinesFile = builderPaths(nodes[0]!.dataDir).machinesFile
    // The machines file lists the socket once the peers are seen.
    await waitFor(async () => (await readFile(machinesFile, 'utf8').catch(() => '')).includes('unix://'), 20_000, 'the machines file to list the socket')
  })

  after(async () => {
    await Promise.allSettled(nodes.map(async n => { await stopNode(n) }))
    await net?.destroy()
  })

  it('nix-config prints the builders line naming the machines file, which lists the socket with the mesh\'s systems and slots', async () => {
    const r = await cli(nodes[0]!, ['nix-config', '--json'])
    assert.equal(r.code, 0, r.stderr)
    const c = JSON.parse(r.stdout) as { lines: string[], machines: string, serving: boolean, socket: string, root: string }
    assert.deepEqual(c.lines, [`builders = @${machinesFile}`])
    assert.equal(c.serving, true)
    const fields = c.machines.trim().split(' ')
    assert.equal(fields[0], `unix://${c.socket}?root=${c.root}`)
    assert.equal(fields[3], '16', 'max-jobs follows the peers\' slots (2 + 2, four each, at least 16): the serving node\'s own never build for it')
  })

  it('nix-build of a DAG of 9 derivations succeeds, built by both peers, with the NAR hashes of a local build', async () => {
    const before = await Promise.all(nodes.map(built))
    const r = await viaMesh('nix-build', [file, '-A', 'top', '--no-out-link'])
    assert.equal(r.code, 0, `nix-build failed:\n${r.stderr.slice(-3000)}`)
    const out = r.stdout.trim()
    assert.match(out, /^\/nix\/store\/[a-z0-9]{32}-top$/)
    assert.match(r.stderr, new RegExp(`building leaf-0 \\(${tag}\\)`), 'the build log did not reach the terminal of nix-build')
    const after = await Promise.all(nodes.map(built))
    assert.equal(after[0]! - before[0]!, 0, 'the serving node built a job itself')
    assert.ok(after[1]! > before[1]! && after[2]! > before[2]!, `builds per node: ${after.map((a, i) => a - before[i]!).join(', ')}; both peers should have built`)
    assert.equal(after[1]! + after[2]! - before[1]! - before[2]!, 9)
    const shown = await status(nodes[0]!)
    assert.deepEqual(shown.builder?.builds, { built: 9, failed: 0, running: 0 }, 'status does not count the socket\'s builds')
    assert.match((await cli(nodes[0]!, ['status'])).stdout, /Builder socket: .*plain Nix builds: 9 built, 0 failed/)
    // All 9 outputs valid in A's store, with what a local build on D makes.
    const drvs = (await hostA.execText('nix-store', ['-qR', (await hostA.execText('nix-instantiate', [file, '-A', 'top'])).trim()])).trim().split('\n').filter(p => p.endsWith('.drv'))
    const closure = (await hostA.execText('nix-store', ['-q', '--outputs', ...drvs])).trim().split('\n').sort()
    assert.equal(closure.length, 9)
    assert.ok(closure.includes(out))
    await hostA.execText('nix-store', ['--verify-path', ...closure])
    const local = await net.host(3).exec('nix-build', [file, '-A', 'top', '--no-out-link', '-j', '4', '--option', 'builders', ''], { timeoutMs: 120_000 })
    assert.equal(local.code, 0, local.stderr)
    assert.equal(local.stdout.trim(), out)
    const hashes = async (h: TestHost): Promise<string> => await h.execText('nix-store', ['-q', '--hash', ...closure])
    assert.equal(await hashes(hostA), await hashes(net.host(3)))
  })

  it('nix-store --realise of a derivation builds it and its dependency through the mesh', async () => {
    const drv = (await hostA.execText('nix-instantiate', [file, '-A', 'other'])).trim()
    const r = await viaMesh('nix-store', ['--realise', drv])
    assert.equal(r.code, 0, r.stderr.slice(-3000))
    assert.match(r.stdout.trim(), /-other$/)
    const content = await hostA.execText('cat', [r.stdout.trim()])
    assert.match(content, new RegExp(`${tag} other\\n${tag} other-dep`))
    // Once the node has swept its root copy (Nix has it now), collected from A's store, then asked
    // for again: built again through the mesh, not answered from the first build.
    const rootCopy = join(builderPaths(nodes[0]!.dataDir).root, r.stdout.trim())
    await waitFor(() => !existsSync(rootCopy), 30_000, 'the builder root to sweep the copied output')
    await hostA.execText('nix-store', ['--delete', r.stdout.trim()])
    const again = await viaMesh('nix-store', ['--realise', drv])
    assert.equal(again.code, 0, again.stderr.slice(-3000))
    await hostA.execText('nix-store', ['--verify-path', again.stdout.trim()])
  })

  it('a failing derivation fails nix-build with its log tail and Nix\'s exit code for a remote failure', async () => {
    const r = await viaMesh('nix-build', [file, '-A', 'broken', '--no-out-link'])
    assert.equal(r.code, 1, `exit ${r.code}:\n${r.stderr}`)
    assert.match(r.stderr, /the builder of broken gives up/, 'the log tail is not in the error')
    assert.match(r.stderr, /build of '\/nix\/store\/[a-z0-9]{32}-broken\.drv' on 'unix:\/\/[^']+' failed/)
  })

  it('a build past --timeout is reported as timed out', async () => {
    const started = Date.now()
    const r = await viaMesh('nix-build', [file, '-A', 'slow', '--no-out-link', '--timeout', '3'])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /timed out/, r.stderr)
    assert.ok(Date.now() - started < 25_000, `took ${Date.now() - started} ms: the timeout did not reach the builder`)
  })

  it('a derivation needing a feature no peer has gets Nix\'s usual refusal at once', async () => {
    const started = Date.now()
    const r = await viaMesh('nix-build', [file, '-A', 'special', '--no-out-link'], 60_000)
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /special/, r.stderr)
    assert.match(r.stderr, /required to build|Failed to find a machine|unable to start any build/, r.stderr)
    assert.ok(Date.now() - started < 30_000, 'the refusal hung')
  })

  it('a worker killed mid-build: the plain nix-build still completes', async () => {
    const child = hostA.spawn('nix-build', [file, '-A', 'killed', '--no-out-link', '--option', 'builders', `@${machinesFile}`, '--max-jobs', '0'])
    let stdout = ''
    let stderr = ''
    child.stdout?.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const exit = new Promise<number | null>(resolve => { child.once('exit', code => { resolve(code) }) })
    let victim: MeshNodeHandle | undefined
    await waitFor(async () => {
      for (const n of nodes.slice(1)) {
        if ((await status(n)).self.building.some(p => p.endsWith('-killed.drv'))) { victim = n; return true }
      }
      return false
    }, 60_000, 'a peer to start building "killed"')
    await stopNode(victim!, 'SIGKILL')
    nodes = nodes.filter(n => n !== victim)
    const code = await Promise.race([exit, new Promise<'hung'>(resolve => setTimeout(() => { resolve('hung') }, 120_000))])
    if (code === 'hung') child.kill('SIGKILL')
    assert.equal(code, 0, `nix-build ended ${String(code)}:\n${stderr.slice(-3000)}`)
    assert.match(stdout.trim(), /-killed$/)
  })
})
