// A real MeshNode (real libp2p on loopback, this machine's real Nix store) against a rogue peer
// that holds the mesh secret but speaks garbage: every bad stream is cut off quickly, bad gossip
// is dropped, bad NARs never become valid paths, and the node keeps serving honest requests.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Libp2p } from 'libp2p'
import type { GossipSub } from '@libp2p/gossipsub'
import { MeshNode } from '../../node/mesh/mesh-node.ts'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { call } from '../../node/mesh/rpc.ts'
import { fetchClosure } from '../../node/mesh/store-transfer.ts'
import { createLogger } from '../../node/log.ts'
import { exec, execText } from '../../node/nix/exec.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import {
  MAX_GOSSIP_BYTES, PROTOCOL_LEASE, PROTOCOL_NAR, PROTOCOL_PATH_INFO, PROTOCOL_RESULT, PROTOCOL_STEAL, REPLY_TIMEOUT_MS,
  TOPIC_BEACON, TOPIC_OFFER
} from '../../protocols/mesh/constants.ts'
import { RESULT, STEAL } from '../../protocols/mesh/request-protocols.ts'
import {
  validateNarHeader, validateNarRequest, validatePathInfoReply, validatePathInfoRequest, type Beacon, type PathInfoMessage
} from '../../protocols/mesh/messages.ts'
import { StreamEndedError, type StreamChannel } from '../../protocols/mesh/stream-channel.ts'
import { shDrv, instantiate, tempDir } from '../helpers/nix.ts'
import { waitFor, within } from '../helpers/wait.ts'
import { LOCAL_SYSTEM, startLoopbackNode, startRogue } from '../helpers/loopback-mesh.ts'
import { CLAIM_HOLD_MS } from '../../node/scheduler/scheduler.ts'

const SYSTEM = LOCAL_SYSTEM
const anything = (v: unknown): unknown => v

function frame (body: Uint8Array): Buffer {
  const head = Buffer.alloc(4)
  head.writeUInt32BE(body.byteLength, 0)
  return Buffer.concat([head, body])
}

/** A store path that exists nowhere: valid syntax, random hash. */
function absentPath (name = 'absent'): string {
  const nix32 = '0123456789abcdfghijklmnpqrsvwxyz'
  return `/nix/store/${[...randomBytes(32)].map(b => nix32[b % 32]).join('')}-${name}`
}

/** A real store path with random content, its NAR, then deleted so that it can be imported again. */
async function disposablePath (dir: string, name: string): Promise<{ path: string, nar: Buffer, info: PathInfoMessage }> {
  const file = join(dir, name)
  await writeFile(file, `meshbuild hostile-peer test ${randomBytes(16).toString('hex')}\n`)
  const path = (await execText('nix-store', ['--add', file])).trim()
  const dump = await exec('nix-store', ['--dump', path])
  assert.equal(dump.code, 0, dump.stderr)
  await execText('nix-store', ['--delete', path])
  assert.equal(await isValid(path), false)
  const nar = dump.stdout
  return { path, nar, info: { path, narHash: Hash.of('sha256', nar).toNix32(), narSize: nar.byteLength, references: [] } }
}

async function isValid (path: string): Promise<boolean> {
  return (await exec('nix-store', ['--check-validity', path])).code === 0
}

/** Reads until the stream ends; resolves with the error that ended it. */
async function readFails (ch: StreamChannel, timeoutMs: number): Promise<Error> {
  const started = Date.now()
  try {
    const m = await ch.readMessage(anything, { maxBytes: 1 << 20, timeoutMs })
    assert.fail(`the node answered a bad request with ${JSON.stringify(m)}`)
  } catch (err) {
    const e = err as Error
    if (e.name === 'AssertionError') throw e
    assert.ok(Date.now() - started < timeoutMs, `the node left the stream open for ${timeoutMs} ms`)
    return e
  }
}

/** What the rogue says of a path on path-info (`info`) and in its NAR header (`header`, else `info`), and the bytes it sends. */
interface Served { info: PathInfoMessage, header?: PathInfoMessage, bytes: Buffer, cutAfter?: number }

const STREAM_PROTOCOLS = [PROTOCOL_STEAL, PROTOCOL_LEASE, PROTOCOL_RESULT, PROTOCOL_PATH_INFO, PROTOCOL_NAR]

// [what the rogue sends, the bytes, close its side afterwards, the error the node logs]
const BAD_STREAMS: Array<[string, Buffer, boolean, string]> = [
  ['bytes that are no frame at all', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), false, 'MessageTooLargeError'],
  ['a frame announcing 2 GiB', Buffer.concat([Buffer.from([0x80, 0, 0, 0]), randomBytes(64)]), false, 'MessageTooLargeError'],
  ['a frame that is not JSON', frame(Buffer.from('{"want": 1, oops')), false, 'MalformedMessageError'],
  ['a frame of invalid UTF-8', frame(Buffer.from([0xff, 0xfe, 0x7b, 0x00])), false, 'MalformedMessageError'],
  ['valid JSON failing the schema', frame(Buffer.from(JSON.stringify({ want: -1, renew: 'x', drvPath: 7, roots: ['garbage'], paths: [{}] }))), false, 'SchemaError'],
  ['a JSON list instead of an object', frame(Buffer.from('[1,2,3]')), false, 'SchemaError'],
  ['a truncated frame, then the end', Buffer.concat([Buffer.from([0, 0, 0, 100]), Buffer.from('{"want":')]), true, 'StreamEndedError']
]

describe('a mesh node facing a hostile peer', { timeout: 180_000 }, () => {
  let node: MeshNode
  let rogue: MeshNetwork
  let rogueLibp2p: Libp2p<{ pubsub: GossipSub }>
  let dir: string
  let cleanup: () => Promise<void>
  const logLines: string[] = []
  /** What the rogue serves on path-info and nar: per path, the header info it claims and the bytes it sends. */
  const served = new Map<string, Served>()

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-hostile-'))
    node = await startLoopbackNode(dir, 's', {
      // The rogue must stay connected through every case below: penalties are logged, not
      // enforced (test/integration/network-limits.test.ts shows them enforced).
      penalties: { durationMs: 0 },
      log: createLogger('node', 'debug', (l) => { logLines.push(l) })
    })
    rogue = await startRogue(node, 's', createLogger('rogue', 'warn'))
    // The rogue publishes raw bytes, which MeshNetwork never would: reach for its libp2p.
    rogueLibp2p = (rogue as unknown as { node: Libp2p<{ pubsub: GossipSub }> }).node

    // The rogue serves the store protocols from `served`, lying as told.
    await rogue.handle(PROTOCOL_PATH_INFO, async (ch) => {
      const req = await ch.readMessage(validatePathInfoRequest, { maxBytes: 1 << 20, timeoutMs: 5000 })
      const infos = req.roots.flatMap(r => { const s = served.get(r); return s !== undefined ? [s.info] : [] })
      await ch.writeMessage({ infos, missing: req.roots.filter(r => !served.has(r)) })
    })
    await rogue.handle(PROTOCOL_NAR, async (ch) => {
      const req = await ch.readMessage(validateNarRequest, { maxBytes: 1 << 20, timeoutMs: 5000 })
      for (const p of req.paths) {
        const s = served.get(p) ?? assert.fail(`rogue asked for ${p}`)
        await ch.writeMessage({ path: p, info: s.header ?? s.info })
        if (s.cutAfter !== undefined) {
          await ch.write(s.bytes.subarray(0, s.cutAfter))
          return
        }
        await ch.write(s.bytes)
      }
    })
  })

  after(async () => {
    await rogue?.stop()
    await node?.stop()
    await cleanup?.()
  })

  it('cuts off every malformed stream on every protocol at once, naming the error', async () => {
    const started = Date.now()
    const silent = await rogue.open(node.peerId, PROTOCOL_STEAL)
    const runs = STREAM_PROTOCOLS.flatMap(protocol => BAD_STREAMS.map(async ([what, bytes, closeAfter, errorName]) => {
      const ch = await rogue.open(node.peerId, protocol)
      await ch.write(bytes)
      if (closeAfter) await ch.close()
      const err = await readFails(ch, 5_000)
      assert.ok(err instanceof StreamEndedError, `${protocol}, ${what}: the rogue saw ${err.name}: ${err.message}`)
      return { protocol, what, errorName }
    }))
    const done = await within(Promise.all(runs), 20_000, 'the node to cut off the bad streams')
    assert.equal(done.length, STREAM_PROTOCOLS.length * BAD_STREAMS.length)
    assert.ok(Date.now() - started < 10_000, `took ${Date.now() - started} ms`)
    // Each refusal is logged with the protocol, the peer and why.
    for (const { protocol, what, errorName } of done) {
      assert.ok(logLines.some(l => l.includes(`${protocol} from ${rogue.peerId}: ${errorName}`)),
        `no log line for ${protocol}, ${what} (${errorName})`)
    }
    // Malformed streams count against the rogue (enforcement is off here, so it stays connected).
    assert.ok(logLines.some(l => l.includes(`would cut off ${rogue.peerId}`)), 'the rogue was not penalised')

    // A peer that opens a stream and says nothing is cut off after the reply timeout.
    const err = await readFails(silent, REPLY_TIMEOUT_MS + 5_000)
    assert.ok(err instanceof StreamEndedError, `${err.name}: ${err.message}`)
    assert.ok(logLines.some(l => l.includes(`${PROTOCOL_STEAL} from ${rogue.peerId}: TimeoutError`)))
  })

  it('answers a NAR request for a path it lacks with an error header, and a path-info request with `missing`', async () => {
    const absent = absentPath()
    const ch = await rogue.open(node.peerId, PROTOCOL_NAR)
    await ch.writeMessage({ paths: [absent] })
    const header = await ch.readMessage(validateNarHeader, { maxBytes: 1 << 20, timeoutMs: 5000 })
    assert.deepEqual(header, { path: absent, error: 'not valid in this store' })
    assert.ok((await readFails(ch, 5000)) instanceof StreamEndedError, 'the stream ends after the last header')

    const info = await rogue.open(node.peerId, PROTOCOL_PATH_INFO)
    await info.writeMessage({ roots: [absent] })
    assert.deepEqual(await info.readMessage(validatePathInfoReply, { maxBytes: 1 << 20, timeoutMs: 5000 }), { infos: [], missing: [absent] })
    await info.close()
  })

  it('drops garbage and oversized gossip: the rogue does not become a peer', async () => {
    const pubsub = rogueLibp2p.services.pubsub
    await waitFor(() => pubsub.getSubscribers(TOPIC_BEACON).some(p => p.toString() === node.peerId), 10_000, 'the rogue to see the node subscribed')
    const good: Beacon = {
      v: 1, seq: 1, systems: [SYSTEM], features: [], mandatoryFeatures: [], maxJobs: 4, running: 0, queued: 5,
      speedFactor: 1, load: 0, freeDiskBytes: 1e12, diskLow: false, building: [], addresses: []
    }
    const garbage: Array<[string, Uint8Array]> = [
      ['not JSON', Buffer.from('\x00\x01 definitely not json')],
      ['JSON of the wrong shape', Buffer.from(JSON.stringify({ ...good, v: 2 }))],
      ['a negative queue', Buffer.from(JSON.stringify({ ...good, queued: -5 }))],
      ['a bad store path in building', Buffer.from(JSON.stringify({ ...good, building: ['/etc/passwd'] }))],
      // Valid in every field, padded past the gossip size limit (unknown fields are otherwise ignored).
      ['a valid beacon over the size limit', Buffer.from(JSON.stringify({ ...good, pad: 'x'.repeat(MAX_GOSSIP_BYTES) }))]
    ]
    for (const [, data] of garbage) {
      await pubsub.publish(TOPIC_BEACON, data).catch(() => {})
      await pubsub.publish(TOPIC_OFFER, data).catch(() => {})
    }
    await pubsub.publish(TOPIC_OFFER, Buffer.from(JSON.stringify({ v: 1, seq: 1, entries: [{ system: SYSTEM, requiredFeatures: [], count: 3 }] })))
    // Two beacon intervals: long enough for anything delivered to be in the table.
    await new Promise(resolve => setTimeout(resolve, 4_000))
    assert.equal(node.status().peers.some(p => p.peerId === rogue.peerId), false, 'a garbage beacon made the rogue a peer')
    assert.ok(node.network.connectedPeers().includes(rogue.peerId), 'the connection survives')

    // The same path does carry a valid beacon: the absence above was the validators' doing.
    await waitFor(async () => {
      await rogue.publish(TOPIC_BEACON, { ...good, seq: Date.now() })
      return node.status().peers.some(p => p.peerId === rogue.peerId)
    }, 10_000, 'the rogue\'s valid beacon to reach the node', 500)
    const seen = node.status().peers.find(p => p.peerId === rogue.peerId)
    assert.equal(seen?.maxJobs, 4)

    // A frame over gossipsub's own inbound limit (maxInboundDataLength) is never parsed: gossipsub
    // drops its inbound stream from the sender (measured: later beacons from that sender are not
    // heard until it reconnects). The node itself and the connection carry on.
    await pubsub.publish(TOPIC_BEACON, Buffer.from(JSON.stringify({ ...good, seq: Date.now(), pad: 'x'.repeat(MAX_GOSSIP_BYTES * 5) }))).catch(() => {})
    await new Promise(resolve => setTimeout(resolve, 1_000))
    assert.ok(node.network.connectedPeers().includes(rogue.peerId), 'the connection survives')
    // And the node still answers: an honest path-info request gets its reply.
    const absent = absentPath()
    const info = await rogue.open(node.peerId, PROTOCOL_PATH_INFO)
    await info.writeMessage({ roots: [absent] })
    assert.deepEqual(await info.readMessage(validatePathInfoReply, { maxBytes: 1 << 20, timeoutMs: 5000 }), { infos: [], missing: [absent] })
    await info.close()
  })

  it('keeps serving honest requests after all that', async () => {
    const grant = await within(call(rogue, node.peerId, STEAL, { want: 2, systems: [SYSTEM], features: [], mandatoryFeatures: [] }), 10_000, 'a steal grant')
    assert.deepEqual(grant.items, [], 'nothing to steal')
    assert.ok(grant.leaseMs >= 1000)
    assert.deepEqual(node.status().submissions, [])
  })

  describe('NARs that are not what they claim', () => {
    // [what the rogue does wrong, how to make its reply from the honest one, the error fetchClosure throws]
    const lies: Array<[string, (p: { path: string, nar: Buffer, info: PathInfoMessage }) => Served, string]> = [
      ['claims a hash the bytes do not have', (p) => ({ info: { ...p.info, narHash: Hash.of('sha256', 'something else').toNix32() }, bytes: p.nar }), 'NarHashMismatch'],
      ['sends one corrupted byte', (p) => ({ info: p.info, bytes: corrupt(p.nar) }), 'NarHashMismatch'],
      ['sends more bytes than it announced', (p) => ({ info: { ...p.info, narSize: p.nar.byteLength - 8 }, bytes: p.nar }), 'NarHashMismatch'],
      ['stops halfway and hangs up', (p) => ({ info: p.info, bytes: p.nar, cutAfter: Math.floor(p.nar.byteLength / 2) }), 'StreamEndedError'],
      // The content address travels with the path into the store (signatures do not cover it):
      // Nix checks it against the bytes and refuses the path.
      ['claims a content address its bytes do not have', (p) => ({ info: { ...p.info, ca: `fixed:r:${Hash.of('sha256', 'other content').toNix32()}` }, bytes: p.nar }), 'DaemonError']
    ]
    for (const [what, lie, errorName] of lies) {
      it(`refuses a NAR that ${what}; the path stays invalid`, async () => {
        const p = await disposablePath(dir, `lie-${randomBytes(4).toString('hex')}`)
        served.set(p.path, lie(p))
        await assert.rejects(within(fetchClosure(node.network, node.store, rogue.peerId, [p.path]), 30_000, 'fetchClosure'),
          (err: Error) => { assert.equal(err.name, errorName, err.message); return true })
        assert.equal(await isValid(p.path), false, `${p.path} became valid`)
        assert.equal(existsSync(p.path), false, `${p.path} was left on disk`)

        // Nothing is wedged: the honest NAR imports, with the right content.
        served.set(p.path, { info: p.info, bytes: p.nar })
        const r = await within(fetchClosure(node.network, node.store, rogue.peerId, [p.path]), 30_000, 'the honest fetch')
        assert.deepEqual(r.imported, [p.path])
        await execText('nix-store', ['--verify-path', p.path])
        assert.equal((await execText('nix-store', ['--query', '--hash', p.path])).trim(), p.info.narHash)
        // Through the node's store: its daemon connections hold a temporary root on what they imported.
        await node.store.deletePaths([p.path])
      })
    }

    it('refuses a NAR header that describes another path than the one asked for, importing nothing', async () => {
      const asked = await disposablePath(dir, `asked-${randomBytes(4).toString('hex')}`)
      const other = await disposablePath(dir, `other-${randomBytes(4).toString('hex')}`)
      // Path-info tells the truth; the NAR header names the right path but carries another
      // path's info, with that path's (self-consistent) NAR.
      served.set(asked.path, { info: asked.info, header: other.info, bytes: other.nar })
      await assert.rejects(within(fetchClosure(node.network, node.store, rogue.peerId, [asked.path]), 30_000, 'fetchClosure'),
        (err: Error) => { assert.equal(err.name, 'ProtocolError', `${err.name}: ${err.message}`); return true })
      assert.equal(await isValid(other.path), false, 'the node imported a path it never asked for')
      assert.equal(await isValid(asked.path), false)
    })

    it('refuses a path-info reply that describes neither the root nor says it is missing', async () => {
      const asked = await disposablePath(dir, `asked-${randomBytes(4).toString('hex')}`)
      const other = await disposablePath(dir, `other-${randomBytes(4).toString('hex')}`)
      served.set(asked.path, { info: other.info, bytes: other.nar })
      served.set(other.path, { info: other.info, bytes: other.nar })
      await assert.rejects(within(fetchClosure(node.network, node.store, rogue.peerId, [asked.path]), 30_000, 'fetchClosure'),
        (err: Error) => { assert.equal(err.name, 'ProtocolError', `${err.name}: ${err.message}`); return true })
      assert.equal(await isValid(other.path), false, 'the node imported a path it never asked for')
      assert.equal(await isValid(asked.path), false)
    })

    it('refuses a NAR header whose hash differs from what path-info said', async () => {
      const p = await disposablePath(dir, `flip-${randomBytes(4).toString('hex')}`)
      // Both claims are about the same path, but the peer contradicts itself.
      served.set(p.path, { info: p.info, header: { ...p.info, narHash: Hash.of('sha256', 'x').toNix32() }, bytes: p.nar })
      await assert.rejects(fetchClosure(node.network, node.store, rogue.peerId, [p.path]), { name: 'ProtocolError' })
      assert.equal(await isValid(p.path), false)
    })

    it('after a worker reports outputs whose NAR is corrupt, refuses them and builds the job itself: nothing lost', async () => {
      const tag = randomBytes(8).toString('hex')
      const expr = `{ a = ${shDrv(`hostile-a-${tag}`, `echo built a ${tag} > $out; /bin/sleep 3`)}; b = ${shDrv(`hostile-b-${tag}`, `echo built b ${tag} > $out; /bin/sleep 3`)}; }`
      const [drvA, drvB] = await instantiate(expr, dir, ['a', 'b'])
      assert.ok(drvA !== undefined && drvB !== undefined)
      const id = await node.submit([drvA, drvB], { priority: 0 })
      // Jobs ready at a submission wait CLAIM_HOLD_MS where a peer with an earlier id (the rogue's,
      // half the time) could claim them; only then are they granted.
      await new Promise(resolve => setTimeout(resolve, CLAIM_HOLD_MS + 100))
      // maxJobs 1: the node builds one, the other waits ready to be stolen.
      const grant = await within(call(rogue, node.peerId, STEAL, { want: 1, systems: [SYSTEM], features: [], mandatoryFeatures: [] }), 10_000, 'a steal grant')
      assert.equal(grant.items.length, 1, 'the rogue got a job')
      const item = grant.items[0] ?? assert.fail()
      const out = item.outputs.out ?? assert.fail('no output named out')

      // The rogue claims it built the job, and serves a NAR for the output that does not match its header.
      const fake = await disposablePath(dir, `fake-${tag}`)
      served.set(out, { info: { ...fake.info, path: out }, bytes: corrupt(fake.nar) })
      const ack = await call(rogue, node.peerId, RESULT, { drvPath: item.drvPath, ok: true, outputs: { out } })
      assert.equal(ack.accepted, true)
      await waitFor(() => logLines.some(l => l.includes(`fetching outputs of ${item.drvPath} from ${rogue.peerId} failed`)), 20_000, 'the node to refuse the outputs')
      assert.equal(await isValid(out), false, 'the corrupt output did not become valid')

      await waitFor(() => node.submissionReport(id)?.state !== 'running', 60_000, 'the submission to finish', 200)
      const report = node.submissionReport(id) ?? assert.fail()
      assert.equal(report.state, 'built', JSON.stringify(report.results))
      const stolen = report.results.find(r => r.drvPath === item.drvPath) ?? assert.fail()
      assert.equal(stolen.builtBy, node.peerId, 'the node built the job the rogue lied about')
      assert.equal(await isValid(out), true)
      assert.match(await execText('cat', [out]), new RegExp(`^built [ab] ${tag}\\n$`), 'the output is the real build, not the rogue\'s bytes')
      // Neither output was built by the rogue, and the submission took no more than two builds' time.
      assert.ok(report.results.every(r => r.builtBy === node.peerId))
    })
  })
})

/** The NAR with one byte of its file contents flipped (the NAR stays well formed). */
function corrupt (nar: Buffer): Buffer {
  const copy = Buffer.from(nar)
  const at = copy.indexOf('meshbuild hostile-peer test')
  assert.ok(at > 0, 'the NAR holds the file contents')
  copy[at] = (copy[at] ?? 0) ^ 0x20
  return copy
}
