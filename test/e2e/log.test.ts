// End to end: `meshbuild log` and `submit -L` on three test hosts. The submitter builds nothing
// (--max-jobs 0), so every log it shows came over the log protocol from the peer building it.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { ChildProcess } from 'node:child_process'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { cli, drvName, instantiateIn, MESHBUILD_BIN, startNode, stopNode, submit, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { buildLogPath } from '../../node/mesh/builder.ts'
import { waitFor, within } from '../helpers/wait.ts'

const TICKS = 8

function logExpr (tag: string): string {
  return `
let
  mk = { name, script }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
in {
  # One line a second: a follower must see the first ones long before the last.
  ticker = mk { name = "ticker"; script = ''
    i=0
    while [ $i -lt ${TICKS} ]; do i=$((i+1)); echo "tick-$i ${tag}"; /bin/sleep 1; done
    echo ${tag} > $out
  ''; };
  failing = mk { name = "failing"; script = ''
    echo "about to fail ${tag}"; /bin/sleep 3; echo "giving up ${tag}" >&2; exit 1
  ''; };
  chatty = mk { name = "chatty"; script = ''
    echo "hello from chatty ${tag}"; /bin/sleep 1; echo "bye from chatty ${tag}"; echo ${tag} > $out
  ''; };
}`
}

interface Followed {
  child: ChildProcess
  /** Each stdout line with when it arrived. */
  lines: Array<{ line: string, at: number }>
  exit: Promise<number | null>
  stderr: () => string
}

/** Runs `meshbuild log -f PATH` in `node`'s host, recording its lines as they arrive. */
function follow (node: MeshNodeHandle, path: string): Followed {
  const child = node.host.spawn(process.execPath, [MESHBUILD_BIN, 'log', '-f', path, '--data-dir', node.dataDir])
  const lines: Followed['lines'] = []
  let partial = ''
  let err = ''
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    const parts = (partial + d).split('\n')
    partial = parts.pop() ?? ''
    for (const line of parts) lines.push({ line, at: Date.now() })
  })
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { err += d })
  const exit = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
  return { child, lines, exit, stderr: () => err }
}

describe('build logs across three test hosts', { timeout: 300_000 }, () => {
  let net: TestNetwork
  let nodes: MeshNodeHandle[] = []
  let expr: string
  const tag = randomBytes(6).toString('hex')
  const followers: Followed[] = []

  before(async () => {
    net = await TestNetwork.create({ hosts: 3 })
    expr = logExpr(tag)
    nodes = await Promise.all([0, 1, 2].map(async i => await startNode(net, net.host(i), { args: ['--max-jobs', i === 0 ? '0' : '1'] })))
    await waitForMesh(nodes)
  })

  after(async () => {
    for (const f of followers) if (f.child.exitCode === null && f.child.pid !== undefined) { try { process.kill(-f.child.pid, 'SIGKILL') } catch {} }
    for (const n of nodes) await stopNode(n).catch(() => {})
    await net?.destroy()
  })

  it('log -f on nodes that did not build the job follows the running build line by line and exits when it ends', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    const [ticker] = await instantiateIn(net, a.host, expr, ['ticker'])
    assert.ok(ticker !== undefined)
    const submitting = submit(a, [ticker])
    // The builder's own log file says who builds it (the test reads the data dirs directly).
    let builder: MeshNodeHandle | undefined
    await waitFor(() => {
      builder = [b, c].find(n => existsSync(buildLogPath(join(n.dataDir, 'logs'), ticker)))
      return builder !== undefined
    }, 60_000, 'a peer to start building the ticker')
    assert.ok(builder !== undefined)
    const bystander = builder === b ? c : b
    // The owner (relays from the builder it leased the job to) and a node that knows nothing of
    // the job (finds the builder by its beacon).
    const fromOwner = follow(a, ticker)
    const fromBystander = follow(bystander, ticker)
    followers.push(fromOwner, fromBystander)
    for (const [who, f] of [['owner', fromOwner], ['bystander', fromBystander]] as const) {
      const code = await within(f.exit, 60_000, `log -f on the ${who} to exit`)
      assert.equal(code, 0, `${who}: ${f.stderr()}`)
      const ticks = f.lines.filter(l => l.line.endsWith(` ${tag}`) && l.line.startsWith('tick-'))
      const last = ticks.find(l => l.line.startsWith(`tick-${TICKS} `))
      assert.ok(last !== undefined, `${who} saw the last line: ${JSON.stringify(f.lines.map(l => l.line))}`)
      // Streamed, not read at the end: the lines written a second apart arrived seconds apart.
      const first = ticks[0]
      assert.ok(first !== undefined && last.at - first.at >= 2_000,
        `${who}: the lines arrived ${last.at - (first?.at ?? 0)} ms apart, not as the build wrote them`)
    }
    const r = await within(submitting, 60_000, 'the submission')
    assert.equal(r.code, 0, r.stderr)
    // Once over, the whole log is there, from any node.
    const whole = await cli(a, ['log', ticker], undefined, 30_000)
    assert.equal(whole.code, 0, whole.stderr)
    assert.equal(whole.stdout.split('\n').filter(l => l.startsWith('tick-')).length, TICKS)
    const fromElsewhere = await cli(bystander, ['log', ticker], undefined, 30_000)
    assert.equal(fromElsewhere.code, 0, fromElsewhere.stderr)
    assert.equal(fromElsewhere.stdout, whole.stdout)
    // An output path names its derivation (the owner's jobs know their outputs).
    const out = r.report?.results.find(x => x.drvPath === ticker)?.outputs.out
    assert.ok(out !== undefined)
    const byOutput = await cli(a, ['log', out], undefined, 30_000)
    assert.equal(byOutput.code, 0, byOutput.stderr)
    assert.match(byOutput.stdout, new RegExp(`tick-1 ${tag}`))
  })

  it('log -f of a build that fails exits non-zero', async () => {
    const [a, b, c] = nodes
    assert.ok(a !== undefined && b !== undefined && c !== undefined)
    const [failing] = await instantiateIn(net, a.host, expr, ['failing'])
    assert.ok(failing !== undefined)
    const submitting = submit(a, [failing])
    await waitFor(() => [b, c].some(n => existsSync(buildLogPath(join(n.dataDir, 'logs'), failing))), 60_000, 'the failing build to start')
    const f = follow(a, failing)
    followers.push(f)
    const code = await within(f.exit, 60_000, 'log -f to exit')
    assert.equal(code, 1, f.stderr())
    assert.ok(f.lines.some(l => l.line === `about to fail ${tag}`), JSON.stringify(f.lines))
    assert.match(f.stderr(), /failed/)
    assert.notEqual((await within(submitting, 60_000, 'the submission')).code, 0)
  })

  it('log of a derivation nobody built says so and exits non-zero', async () => {
    const [a] = nodes
    assert.ok(a !== undefined)
    const unknown = `/nix/store/${'0'.repeat(32)}-never-built-${tag}.drv`
    const r = await cli(a, ['log', unknown], undefined, 60_000)
    assert.equal(r.code, 1)
    assert.match(r.stderr, new RegExp(`never-built-${tag}`))
    assert.equal(r.stdout, '')
  })

  it('submit -L prints the builds\' lines prefixed with the derivation\'s name', async () => {
    const [a] = nodes
    assert.ok(a !== undefined)
    const [chatty] = await instantiateIn(net, a.host, expr, ['chatty'])
    assert.ok(chatty !== undefined)
    const r = await submit(a, [chatty], ['-L'])
    assert.equal(r.code, 0, r.stderr)
    const name = drvName(chatty)
    assert.equal(name, 'chatty')
    assert.match(r.stderr, new RegExp(`^chatty> hello from chatty ${tag}$`, 'm'))
    assert.match(r.stderr, new RegExp(`^chatty> bye from chatty ${tag}$`, 'm'))
    // stdout stays the JSON outcome.
    assert.equal(r.report?.state, 'built')
  })
})
