// Trust is explicit: a real MeshNode (real libp2p on loopback, this machine's real Nix store)
// against a rogue member that holds the mesh secret and announces its own signing key. As an
// owner, the node imports a worker's outputs only when the path infos carry a valid signature by
// the key that worker announces; as a thief, it imports an owner's inputs under the same rule.
// Anything else is refused before a byte is imported, and the job is built elsewhere.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { MeshNode } from '../../node/mesh/mesh-node.ts'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { call, serve } from '../../node/mesh/rpc.ts'
import { createLogger } from '../../node/log.ts'
import { exec, execText } from '../../node/nix/exec.ts'
import { CLAIM_HOLD_MS, type Scheduler } from '../../node/scheduler/scheduler.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { formatPublicKey, generateKeyPair, type SecretKey } from '../../protocols/nix/signing-key.ts'
import { signDetached } from '../../protocols/nix/signature.ts'
import { PROTOCOL_NAR, PROTOCOL_PATH_INFO, TOPIC_BEACON, TOPIC_OFFER } from '../../protocols/mesh/constants.ts'
import { LEASE, RESULT, STEAL } from '../../protocols/mesh/request-protocols.ts'
import {
  validateNarRequest, validatePathInfoRequest, type Beacon, type PathInfoMessage, type ResultReport
} from '../../protocols/mesh/messages.ts'
import { pathFingerprint } from '../../node/signer/offer.ts'
import { shDrv, instantiate, tempDir } from '../helpers/nix.ts'
import { waitFor, within } from '../helpers/wait.ts'
import { LOCAL_SYSTEM, startLoopbackNode, startRogue } from '../helpers/loopback-mesh.ts'

const SYSTEM = LOCAL_SYSTEM
const SECRET = 'trust-test'

async function isValid (path: string): Promise<boolean> {
  return (await exec('nix-store', ['--check-validity', path])).code === 0
}

/** `info` signed by `key` (its fingerprint: path, NarHash, NarSize, references). */
function signedBy (info: PathInfoMessage, key: SecretKey): PathInfoMessage {
  return { ...info, signatures: [signDetached(pathFingerprint({ ...info, narHash: Hash.parse(info.narHash) }), key)] }
}

/** NAR bytes of a single regular file holding `text`, and its path info under `path`. */
async function fakeOutput (dir: string, path: string, text: string): Promise<{ info: PathInfoMessage, nar: Buffer }> {
  const file = join(dir, `fake-${randomBytes(4).toString('hex')}`)
  await writeFile(file, text)
  const nar = (await exec('nix-store', ['--dump', file])).stdout
  return { nar, info: { path, narHash: Hash.of('sha256', nar).toNix32(), narSize: nar.byteLength, references: [] } }
}

describe('trust is explicit: what a member serves enters the store only under its announced key', { timeout: 300_000 }, () => {
  let dir: string
  let cleanup: () => Promise<void>
  let node: MeshNode
  let rogue: MeshNetwork
  const logLines: string[] = []
  /** The rogue's announced Nix key, and a key it does not announce. */
  const announced = generateKeyPair('rogue-announced-1')
  const foreign = generateKeyPair('rogue-foreign-1')
  /** What the rogue serves on path-info and nar, per path. */
  const served = new Map<string, { info: PathInfoMessage, nar: Buffer }>()
  /** Result reports the node sent the rogue (when the rogue is the owner). */
  const results: ResultReport[] = []
  /** Jobs the rogue lends when the node steals from it. */
  let lend: Array<{ drvPath: string, outputs: Record<string, string> }> = []
  let beaconSeq = Date.now()
  let beacons: NodeJS.Timeout | undefined

  const beacon = (offer: boolean): Beacon => ({
    v: 1,
    seq: beaconSeq++,
    systems: [SYSTEM],
    features: [],
    mandatoryFeatures: [],
    maxJobs: 1,
    running: 0,
    queued: offer ? lend.length : 0,
    speedFactor: 1,
    load: 0,
    freeDiskBytes: 1e12,
    diskLow: false,
    building: [],
    addresses: rogue.addresses().slice(0, 4),
    signingKey: formatPublicKey(announced.publicKey)
  })

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-trust-'))
    node = await startLoopbackNode(dir, SECRET, { log: createLogger('node', 'debug', (l) => { logLines.push(l) }) })
    rogue = await startRogue(node, SECRET)
    await rogue.handle(PROTOCOL_PATH_INFO, async (ch) => {
      const req = await ch.readMessage(validatePathInfoRequest, { maxBytes: 1 << 20, timeoutMs: 5000 })
      const infos = req.roots.flatMap(r => { const s = served.get(r); return s !== undefined ? [s.info] : [] })
      await ch.writeMessage({ infos, missing: req.roots.filter(r => !served.has(r)), ...(req.withInputs === true ? { inputs: [] } : {}) })
    })
    await rogue.handle(PROTOCOL_NAR, async (ch) => {
      const req = await ch.readMessage(validateNarRequest, { maxBytes: 1 << 20, timeoutMs: 5000 })
      for (const p of req.paths) {
        const s = served.get(p) ?? assert.fail(`the rogue was asked for ${p}`)
        await ch.writeMessage({ path: p, info: s.info })
        await ch.write(s.nar)
      }
    })
    await serve(rogue, STEAL, () => {
      const items = lend.map(j => ({ ...j, system: SYSTEM, requiredFeatures: [] }))
      lend = []
      return { leaseMs: 120_000, items }
    })
    await serve(rogue, LEASE, () => ({ lost: [] }))
    await serve(rogue, RESULT, (_from, report) => { results.push(report); return { accepted: true } })
    await waitFor(() => node.network.connectedPeers().includes(rogue.peerId), 10_000, 'the rogue to connect')
    // The rogue announces its key, as members do, all along: the node must have it in its peer
    // table when it judges what the rogue serves.
    beacons = setInterval(() => { void rogue.publish(TOPIC_BEACON, beacon(lend.length > 0)).catch(() => {}) }, 1000)
    await waitFor(async () => {
      await rogue.publish(TOPIC_BEACON, beacon(false)).catch(() => {})
      return node.status().peers.some(p => p.peerId === rogue.peerId && p.signingKey === formatPublicKey(announced.publicKey))
    }, 20_000, 'the node to see the rogue\'s beacon', 300)
  })

  after(async () => {
    clearInterval(beacons)
    await rogue?.stop()
    await node?.stop()
    await cleanup?.()
  })

  const attempts = (drvPath: string): number =>
    (node as unknown as { scheduler: Scheduler }).scheduler.job(drvPath)?.attempts ?? 0

  /**
   * The node owns two jobs and builds one (maxJobs 1); the rogue steals the other, reports it
   * built, and serves `serve(out)` as its output. Returns the stolen job and its output.
   */
  async function rogueReports (tag: string, serveAs: (out: string) => Promise<{ info: PathInfoMessage, nar: Buffer }>): Promise<{ id: string, drvPath: string, out: string }> {
    const expr = `{ a = ${shDrv(`trust-a-${tag}`, `echo honest a ${tag} > $out; /bin/sleep 2`)}; b = ${shDrv(`trust-b-${tag}`, `echo honest b ${tag} > $out; /bin/sleep 2`)}; }`
    const drvs = await instantiate(expr, dir, ['a', 'b'])
    const id = await node.submit(drvs, { priority: 0 })
    // Jobs ready at a submission wait CLAIM_HOLD_MS where a peer with an earlier id (the rogue's,
    // half the time) could claim them; only then are they granted.
    await new Promise(resolve => setTimeout(resolve, CLAIM_HOLD_MS + 100))
    const grant = await within(call(rogue, node.peerId, STEAL, { want: 1, systems: [SYSTEM], features: [], mandatoryFeatures: [] }), 10_000, 'a steal grant')
    const item = grant.items[0] ?? assert.fail('the rogue got no job')
    const out = item.outputs.out ?? assert.fail('no output named out')
    served.set(out, await serveAs(out))
    const ack = await call(rogue, node.peerId, RESULT, { drvPath: item.drvPath, ok: true, outputs: { out } })
    assert.equal(ack.accepted, true)
    return { id, drvPath: item.drvPath, out }
  }

  async function finished (id: string): Promise<NonNullable<ReturnType<MeshNode['submissionReport']>>> {
    await waitFor(() => node.submissionReport(id)?.state !== 'running', 60_000, 'the submission to finish', 200)
    return node.submissionReport(id) ?? assert.fail()
  }

  for (const [what, sign, reason] of [
    ['carries no signature', (i: PathInfoMessage) => ({ ...i, signatures: [] }), /carries no signature/],
    ['is signed by a key the worker does not announce', (i: PathInfoMessage) => signedBy(i, foreign.secretKey), /untrusted key\(s\) rogue-foreign-1/],
    ['carries the announced key\'s signature of other metadata', (i: PathInfoMessage) => ({ ...i, signatures: signedBy({ ...i, narSize: i.narSize + 1 }, announced.secretKey).signatures }), /signature by rogue-announced-1 does not match/]
  ] as const) {
    it(`as owner, refuses a worker's output whose path info ${what}; nothing enters the store, the job is built elsewhere`, async () => {
      const tag = randomBytes(6).toString('hex')
      const { id, drvPath, out } = await rogueReports(tag, async (o) => {
        const fake = await fakeOutput(dir, o, `EVIL ${tag}\n`)
        return { ...fake, info: sign(fake.info) }
      })
      await waitFor(() => logLines.some(l => l.includes(`fetching outputs of ${drvPath} from ${rogue.peerId} failed`)), 20_000, 'the node to refuse the result')
      const line = logLines.find(l => l.includes(`fetching outputs of ${drvPath} from ${rogue.peerId} failed`)) ?? ''
      assert.match(line, reason)
      const report = await finished(id)
      assert.equal(report.state, 'built', JSON.stringify(report.results))
      const job = report.results.find(r => r.drvPath === drvPath) ?? assert.fail()
      assert.equal(job.builtBy, node.peerId, 'the refused job was built again, here')
      assert.equal(await execText('cat', [out]), `honest ${/trust-a/.test(drvPath) ? 'a' : 'b'} ${tag}\n`, 'the output is the real build, not the rogue\'s bytes')
      assert.equal(attempts(drvPath), 1, 'the refused result counted as a failed attempt')
    })
  }

  it('as owner, imports an output signed by the key the worker announces (the rule admits members)', async () => {
    const tag = randomBytes(6).toString('hex')
    const { id, drvPath, out } = await rogueReports(tag, async (o) => {
      const fake = await fakeOutput(dir, o, `member-built ${tag}\n`)
      return { ...fake, info: signedBy(fake.info, announced.secretKey) }
    })
    const report = await finished(id)
    assert.equal(report.state, 'built', JSON.stringify(report.results))
    assert.equal(report.results.find(r => r.drvPath === drvPath)?.builtBy, rogue.peerId)
    assert.equal(await isValid(out), true)
    // A member can still lie about what it built: input-addressed outputs cannot be checked by
    // hash alone (that is what --check-reproducible is for). The signature says who vouched.
    assert.equal(await execText('cat', [out]), `member-built ${tag}\n`)
  })

  /** A .drv of the machine store, removed again so that the node must fetch it from the rogue. */
  async function lentDrv (tag: string): Promise<{ drvPath: string, out: string, info: PathInfoMessage, nar: Buffer }> {
    const [drvPath] = await instantiate(`{ x = ${shDrv(`trust-lent-${tag}`, `echo lent ${tag} > $out`)}; }`, dir, ['x'])
    assert.ok(drvPath !== undefined)
    const out = (await execText('nix-store', ['--query', '--outputs', drvPath])).trim()
    const nar = (await exec('nix-store', ['--dump', drvPath])).stdout
    const refs = (await execText('nix-store', ['--query', '--references', drvPath])).trim().split('\n').filter(l => l !== '')
    assert.deepEqual(refs, [], 'the test .drv references nothing (its builder is /bin/sh)')
    await execText('nix-store', ['--delete', drvPath])
    assert.equal(await isValid(drvPath), false)
    return { drvPath, out, nar, info: { path: drvPath, narHash: Hash.of('sha256', nar).toNix32(), narSize: nar.byteLength, references: [] } }
  }

  async function stealFromRogue (drvPath: string, out: string): Promise<ResultReport> {
    results.length = 0
    lend = [{ drvPath, outputs: { out } }]
    // The rogue offers one ready job; the idle node steals it.
    await waitFor(async () => {
      await rogue.publish(TOPIC_BEACON, beacon(true)).catch(() => {})
      await rogue.publish(TOPIC_OFFER, { v: 1, seq: beaconSeq++, entries: lend.length > 0 ? [{ system: SYSTEM, requiredFeatures: [], count: 1 }] : [] }).catch(() => {})
      return results.some(r => r.drvPath === drvPath)
    }, 60_000, 'the node to steal the job and report on it', 500)
    await rogue.publish(TOPIC_OFFER, { v: 1, seq: beaconSeq++, entries: [] }).catch(() => {})
    return results.find(r => r.drvPath === drvPath) ?? assert.fail()
  }

  it('as thief, refuses inputs signed by nobody it trusts: nothing is imported, nothing built', async () => {
    const tag = randomBytes(6).toString('hex')
    const lent = await lentDrv(tag)
    served.set(lent.drvPath, { info: signedBy(lent.info, foreign.secretKey), nar: lent.nar })
    const report = await stealFromRogue(lent.drvPath, lent.out)
    assert.equal(report.ok, false)
    assert.equal(report.failure?.kind, 'transient')
    assert.match(report.failure?.message ?? '', /untrusted key\(s\) rogue-foreign-1/)
    assert.equal(await isValid(lent.drvPath), false, 'the unsigned .drv never entered the store')
    assert.equal(await isValid(lent.out), false, 'nothing was built')
  })

  it('as thief, imports inputs signed by the owner\'s announced key and builds', async () => {
    const tag = randomBytes(6).toString('hex')
    const lent = await lentDrv(tag)
    served.set(lent.drvPath, { info: signedBy(lent.info, announced.secretKey), nar: lent.nar })
    const report = await stealFromRogue(lent.drvPath, lent.out)
    assert.equal(report.ok, true, JSON.stringify(report.failure))
    assert.equal(await execText('cat', [lent.out]), `lent ${tag}\n`)
  })

  it('signs every path info it serves with its own key', async () => {
    const file = join(dir, `served-${randomBytes(4).toString('hex')}`)
    await writeFile(file, 'served\n')
    const path = (await execText('nix-store', ['--add', file])).trim()
    const ch = await rogue.open(node.peerId, PROTOCOL_PATH_INFO)
    await ch.writeMessage({ roots: [path] })
    const reply = await ch.readMessage((v) => v as { infos: PathInfoMessage[] }, { maxBytes: 1 << 20, timeoutMs: 5000 })
    await ch.close()
    const own = node.status().self.signingKey ?? assert.fail()
    const sigs = reply.infos[0]?.signatures ?? []
    assert.ok(sigs.some(s => s.startsWith(`${own.split(':')[0] ?? ''}:`)), `served signatures: ${sigs.join(', ')}`)
  })
})
