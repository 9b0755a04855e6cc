// End to end: membership is closed by default. A mesh of two test hosts with a shared secret, and
// on the same LAN (same bridge, same mDNS) a node with another secret, a node given no secret and
// an --open node: nobody crosses over, in either direction, and the strangers take no work.
// Then: nodes given no secret never mesh with each other, a node keeps the secret it made across
// restarts, and the "add another machine" command it prints really adds one.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { MESHBUILD_BIN, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { waitFor } from '../helpers/wait.ts'

const HOSTS = 6
const JOBS = 6
/** mDNS announces every 2 s (MDNS_INTERVAL_MS) and beacons every 2 s: 8 s is several rounds of each. */
const STRANGER_WATCH_MS = 8_000
const POLL_MS = 1_000

function jobsExpr (tag: string): string {
  return `
let
  mk = i: derivation {
    name = "member-job-\${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${tag} \${toString i} > $out; /bin/sleep 2" ];
  };
in builtins.listToAttrs (builtins.genList (i: { name = "j\${toString i}"; value = mk i; }) ${JOBS})`
}

async function logText (node: MeshNodeHandle): Promise<string> {
  return await readFile(node.logFile, 'utf8').catch(() => '')
}

/** Polls for `ms`: fails at once if any node lists a peer it must not see. */
async function neverSee (nodes: MeshNodeHandle[], forbidden: (n: MeshNodeHandle) => Set<string>, ms: number): Promise<void> {
  const end = Date.now() + ms
  let rounds = 0
  while (Date.now() < end || rounds === 0) {
    for (const n of nodes) {
      const seen = (await status(n)).peers.map(p => p.peerId)
      const bad = seen.filter(p => forbidden(n).has(p))
      assert.deepEqual(bad, [], `${n.host.name} (${n.peerId}) sees ${bad.join(', ')}`)
    }
    rounds++
    await new Promise(resolve => setTimeout(resolve, POLL_MS))
  }
}

describe('closed membership on a shared LAN', { timeout: 600_000 }, () => {
  let net: TestNetwork
  const all: MeshNodeHandle[] = []
  let a: MeshNodeHandle
  let b: MeshNodeHandle
  let otherSecret: MeshNodeHandle
  let noSecret: MeshNodeHandle
  let open: MeshNodeHandle
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    net = await TestNetwork.create({ hosts: HOSTS })
    const otherFile = join(net.sharedDir, 'other.secret')
    const made = await net.host(2).exec(process.execPath, [MESHBUILD_BIN, 'key', 'generate-mesh-secret', otherFile])
    assert.equal(made.code, 0, made.stderr)
    // A has one slot, so B (and any stranger that got in) has work to steal.
    a = await startNode(net, net.host(0), { args: ['--max-jobs', '1'] })
    b = await startNode(net, net.host(1), { args: ['--max-jobs', '2'] })
    otherSecret = await startNode(net, net.host(2), { args: ['--max-jobs', '4', '--mesh-secret-file', otherFile] })
    noSecret = await startNode(net, net.host(3), { args: ['--max-jobs', '4'], secretFile: false })
    open = await startNode(net, net.host(4), { args: ['--max-jobs', '4', '--open'] })
    all.push(a, b, otherSecret, noSecret, open)
    await waitForMesh([a, b])
  })

  after(async () => {
    for (const n of all) await stopNode(n).catch(() => {})
    await net?.destroy()
  })

  it('says on start and in status what each node\'s membership is', async () => {
    const openLog = await logText(open)
    assert.match(openLog, /WARN .*OPEN MESH \(--open\)/)
    assert.equal((await status(open)).self.membership, 'open')
    for (const n of [a, b, otherSecret, noSecret]) assert.equal((await status(n)).self.membership, 'closed', n.host.name)
    const human = await net.host(4).exec(process.execPath, [MESHBUILD_BIN, 'status', '--data-dir', open.dataDir])
    assert.equal(human.code, 0, human.stderr)
    assert.match(human.stdout, /Membership: OPEN/)
  })

  it('strangers see no member, members see no stranger, and no stranger builds a job', async () => {
    const members = new Set([a.peerId, b.peerId])
    const strangers = [otherSecret, noSecret, open]
    const strangerIds = new Set(strangers.map(s => s.peerId))
    const drvs = await instantiateIn(net, net.host(0), jobsExpr(tag), Array.from({ length: JOBS }, (_, i) => `j${i}`))
    const submitted = submit(a, drvs)
    // While the submission runs (work on offer to anyone who steals), nobody crosses over.
    await neverSee([a, b], () => strangerIds, STRANGER_WATCH_MS)
    await neverSee(strangers, () => members, POLL_MS)
    const out = await submitted
    assert.equal(out.code, 0, `submit failed: ${out.stderr}`)
    const results = out.report?.results ?? []
    assert.equal(results.length, JOBS)
    for (const r of results) {
      assert.equal(r.state, 'built', r.drvPath)
      assert.ok(r.builtBy !== undefined && members.has(r.builtBy), `${r.drvPath} built by ${String(r.builtBy)}, not a member`)
    }
    // B stole: the mesh works, so the strangers' absence is not just a dead network.
    assert.ok(results.some(r => r.builtBy === b.peerId), 'B built none of the jobs: the mesh itself did not work')
    for (const s of strangers) {
      const st = await status(s)
      assert.deepEqual(st.peers.map(p => p.peerId).filter(p => members.has(p)), [], `${s.host.name} sees a member`)
      assert.deepEqual(st.counters, { ...st.counters, built: 0, stolen: 0 }, `${s.host.name} built or stole work`)
    }
    // No connection either way: members dialled the strangers mDNS showed them and failed.
    for (const m of [a, b]) {
      const log = await logText(m)
      for (const id of strangerIds) assert.doesNotMatch(log, new RegExp(`connected to ${id}`), `${m.host.name} connected to stranger ${id}`)
    }
    const memberLogs = (await Promise.all([a, b].map(logText))).join('\n')
    for (const s of strangers) {
      const log = await logText(s)
      for (const id of members) assert.doesNotMatch(log, new RegExp(`connected to ${id}`), `stranger ${s.host.name} connected to member ${id}`)
      // They did find each other by mDNS (same LAN) and the handshake failed: the test is not vacuous.
      const triedStranger = new RegExp(`dial ${s.peerId} failed: .*handshake`).test(memberLogs)
      const triedMember = [...members].some(id => new RegExp(`dial ${id} failed: .*handshake`).test(log))
      assert.ok(triedStranger || triedMember, `no handshake between ${s.host.name} and the mesh was even tried`)
    }
  })

  it('two nodes given no secret at all do not form a mesh', async () => {
    const second = await startNode(net, net.host(5), { secretFile: false })
    all.push(second)
    const pair = [noSecret, second]
    await neverSee(pair, (n) => new Set(pair.filter(o => o !== n).map(o => o.peerId)), STRANGER_WATCH_MS)
    const [s1, s2] = await Promise.all([readFile(join(noSecret.dataDir, 'mesh.secret'), 'utf8'), readFile(join(second.dataDir, 'mesh.secret'), 'utf8')])
    assert.notEqual(s1, s2, 'two nodes made the same secret')
    const logs = (await logText(noSecret)) + (await logText(second))
    assert.match(logs, new RegExp(`dial (${noSecret.peerId}|${second.peerId}) failed: .*handshake`), 'the two never even tried a handshake')
    await stopNode(second)
  })

  it('a node keeps the secret it made across a restart, and its "add a machine" command adds one', async () => {
    const file = join(noSecret.dataDir, 'mesh.secret')
    const before = await readFile(file, 'utf8')
    assert.equal((await stat(file)).mode & 0o777, 0o600)
    assert.match(await logText(noSecret), /made a new mesh secret in /)
    await stopNode(noSecret)
    const logBefore = (await logText(noSecret)).length
    noSecret = await startNode(net, net.host(3), { dataDir: noSecret.dataDir, secretFile: false })
    all.push(noSecret)
    assert.equal(await readFile(file, 'utf8'), before, 'the restart changed the secret')
    let command: string | undefined
    await waitFor(async () => {
      const fresh = (await logText(noSecret)).slice(logBefore)
      assert.doesNotMatch(fresh, /made a new mesh secret/)
      command = /run there: (meshbuild join --mesh-secret-file \S+)/.exec(fresh)?.[1]
      return command !== undefined
    }, 10_000, 'the restarted node to print the add-a-machine command')
    const args = (command ?? '').split(' ').slice(2) // after `meshbuild join`
    assert.deepEqual(args, ['--mesh-secret-file', file])
    const third = await startNode(net, net.host(5), { dataDir: join(net.sharedDir, 'node-5-added'), args })
    all.push(third)
    await waitForMesh([noSecret, third], 40_000)
    // The members of the first mesh still see neither.
    const st = await status(a)
    assert.deepEqual(st.peers.map(p => p.peerId).filter(p => p === third.peerId || p === noSecret.peerId), [])
  })
})
