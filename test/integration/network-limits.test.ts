// Hardening of the network layer on real libp2p over loopback: every read is bounded in time
// even when the caller passes its own signal, inbound streams are rate-limited per peer, and a
// peer that sends malformed messages or lies about a NAR is cut off (connections closed and
// refused) until its penalty ends, while honest peers keep being served.
import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Libp2p } from 'libp2p'
import type { GossipSub } from '@libp2p/gossipsub'
import { MeshNetwork, type NetworkInit } from '../../node/mesh/network.ts'
import { createLogger } from '../../node/log.ts'
import { INBOUND_LIMITS, PENALTY_STRIKES, PROTOCOL_STEAL, TOPIC_BEACON } from '../../protocols/mesh/constants.ts'
import { validateStealRequest } from '../../protocols/mesh/messages.ts'
import { TimeoutError } from '../../protocols/mesh/stream-channel.ts'
import { waitFor, within } from '../helpers/wait.ts'

const log = createLogger('test', 'warn')
const anything = (v: unknown): unknown => v
const steal = { want: 1, systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }

describe('network limits and penalties over real libp2p', { timeout: 120_000 }, () => {
  const nodes: MeshNetwork[] = []
  after(async () => { await Promise.all(nodes.map(async n => { await n.stop() })) })

  async function node (extra: Partial<NetworkInit> = {}): Promise<MeshNetwork> {
    const net = new MeshNetwork({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], meshSecret: 'limits', mdns: false, log, ...extra })
    nodes.push(net)
    await net.start()
    return net
  }
  async function connected (server: MeshNetwork, extra: Partial<NetworkInit> = {}): Promise<MeshNetwork> {
    const client = await node({ bootstrap: [server.addresses()[0] ?? assert.fail('no address')], ...extra })
    await waitFor(() => server.connectedPeers().includes(client.peerId), 10_000, 'the client to connect')
    return client
  }
  /** A steal server that answers every valid request with an empty grant. */
  async function stealServer (extra: Partial<NetworkInit> = {}): Promise<{ server: MeshNetwork, served: () => number }> {
    const server = await node(extra)
    let served = 0
    await server.handle(PROTOCOL_STEAL, async (ch) => {
      await ch.readMessage(validateStealRequest, { maxBytes: 4096, timeoutMs: 5000 })
      served++
      await ch.writeMessage({ leaseMs: 60_000, items: [] })
    })
    return { server, served: () => served }
  }
  async function askSteal (client: MeshNetwork, server: MeshNetwork): Promise<boolean> {
    try {
      const ch = await client.open(server.peerId, PROTOCOL_STEAL)
      await ch.writeMessage(steal)
      await ch.readMessage(anything, { maxBytes: 4096, timeoutMs: 5000 })
      await ch.close()
      return true
    } catch {
      return false
    }
  }

  it('times out a read from a peer gone silent even when the caller passes a signal', async () => {
    const server = await node()
    let asked = false
    // Reads the request and never answers, holding the stream open.
    await server.handle('/test/silent/1', async (ch) => {
      await ch.readMessage(anything, { maxBytes: 4096, timeoutMs: 5000 })
      asked = true
      await new Promise(resolve => setTimeout(resolve, 30_000).unref())
    })
    const client = await connected(server)
    const ch = await client.open(server.peerId, '/test/silent/1')
    await ch.writeMessage({ hello: 1 })
    const caller = new AbortController()
    const started = Date.now()
    const err = await within(ch.readMessage(anything, { maxBytes: 4096, timeoutMs: 500, signal: caller.signal }).then(
      () => assert.fail('the silent peer answered'), (e: unknown) => e as Error), 20_000, 'the read to time out')
    assert.ok(err instanceof TimeoutError, `${err.name}: ${err.message}`)
    assert.ok(asked)
    assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`)
    ch.abort(err)

    // The caller's own signal still cuts a read short before its timeout.
    const ch2 = await client.open(server.peerId, '/test/silent/1')
    await ch2.writeMessage({ hello: 2 })
    const err2 = await within(ch2.readMessage(anything, { maxBytes: 4096, timeoutMs: 60_000, signal: AbortSignal.timeout(300) }).then(
      () => assert.fail('answered'), (e: unknown) => e as Error), 20_000, 'the aborted read to end')
    assert.equal(err2.name, 'TimeoutError')
    ch2.abort(err2)
  })

  it('refuses steal streams over a peer\'s rate, counts them, and keeps serving others', async () => {
    const { server, served } = await stealServer()
    const flooder = await connected(server)
    const honest = await connected(server)
    const limit = INBOUND_LIMITS[PROTOCOL_STEAL] ?? assert.fail()
    // Far more than the burst at once, a few at a time to stay under the stream-count limit.
    const n = limit.burst * 3
    let ok = 0
    for (let i = 0; i < n; i += 4) {
      const batch = await Promise.all([0, 1, 2, 3].map(async () => await askSteal(flooder, server)))
      ok += batch.filter(Boolean).length
    }
    const refused = server.refusedStreams()[PROTOCOL_STEAL] ?? 0
    assert.ok(refused > 0, `no stream refused of ${n}`)
    assert.ok(ok < n, `all ${n} steal requests were served`)
    assert.ok(ok >= limit.burst, `only ${ok} served: fewer than the burst of ${limit.burst}`)
    assert.equal(served(), ok)
    // Being limited is no offence: the flooder is not cut off, and another peer is served at once.
    assert.deepEqual(server.penalties(), [])
    assert.equal(await askSteal(honest, server), true)
  })

  it('cuts off a peer that sends malformed streams, and serves it again when its penalty ends', async () => {
    const { server } = await stealServer({ penalties: { durationMs: 3_000 } })
    const rogue = await connected(server)
    const honest = await connected(server)
    for (let i = 0; i < PENALTY_STRIKES; i++) {
      const ch = await rogue.open(server.peerId, PROTOCOL_STEAL)
      await ch.writeMessage({ want: -1 })
      await ch.readMessage(anything, { maxBytes: 4096, timeoutMs: 5000 }).catch(() => {})
    }
    await waitFor(() => server.penalties().some(p => p.peer === rogue.peerId), 5_000, 'the rogue to be penalised')
    const p = server.penalties()[0] ?? assert.fail()
    assert.match(p.reason, /malformed \/meshbuild\/steal\/1\.0\.0 stream/)
    assert.ok(Date.parse(p.until) > Date.now())
    await waitFor(() => !server.connectedPeers().includes(rogue.peerId), 5_000, 'the rogue\'s connection to close')
    // Refused both ways while boxed: the rogue cannot come back, the server does not dial it.
    assert.equal(await askSteal(rogue, server), false)
    assert.equal(server.connectedPeers().includes(rogue.peerId), false)
    assert.equal(await askSteal(honest, server), true)
    // After the penalty, the redial brings the (bootstrap) peer back.
    await waitFor(() => server.connectedPeers().includes(rogue.peerId), 20_000, 'the rogue to be reconnected after its penalty')
    assert.equal(await askSteal(rogue, server), true)
    assert.deepEqual(server.penalties(), [])
  })

  it('cuts off at once a peer penalised for bad data, and a peer that gossips garbage', async () => {
    const server = await node()
    const liar = await connected(server)
    server.penalise(liar.peerId, 'served a NAR that does not match its hash')
    await waitFor(() => !server.connectedPeers().includes(liar.peerId), 5_000, 'the liar\'s connection to close')
    assert.deepEqual(server.penalties().map(p => [p.peer, p.count]), [[liar.peerId, 1]])
    await new Promise(resolve => setTimeout(resolve, 1_000))
    assert.equal(server.connectedPeers().includes(liar.peerId), false, 'the liar reconnected while penalised')

    const gossiper = await connected(server)
    const pubsub = (gossiper as unknown as { node: Libp2p<{ pubsub: GossipSub }> }).node.services.pubsub
    await waitFor(() => pubsub.getSubscribers(TOPIC_BEACON).some(p => p.toString() === server.peerId), 10_000, 'the gossiper to see the server subscribed')
    for (let i = 0; i < PENALTY_STRIKES + 2; i++) await pubsub.publish(TOPIC_BEACON, Buffer.from(`{"v": 1, "garbage": ${i}`)).catch(() => {})
    await waitFor(() => server.penalties().some(p => p.peer === gossiper.peerId), 10_000, 'the gossiper to be penalised')
    assert.match(server.penalties().find(p => p.peer === gossiper.peerId)?.reason ?? '', /malformed gossip on meshbuild\/beacon\/1/)
    await waitFor(() => !server.connectedPeers().includes(gossiper.peerId), 5_000, 'the gossiper\'s connection to close')
  })
})
