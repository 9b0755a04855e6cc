// Two and three real libp2p nodes in this process, on loopback: discovery, gossip validation,
// stream framing with backpressure, and the mesh secret keeping strangers out.
import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { createLogger } from '../../node/log.ts'
import { TOPIC_BEACON } from '../../protocols/mesh/constants.ts'
import { MessageTooLargeError, type StreamChannel } from '../../protocols/mesh/stream-channel.ts'
import type { Beacon } from '../../protocols/mesh/messages.ts'
import { obj, int, validator } from '../../protocols/mesh/schema.ts'
import { waitFor } from '../helpers/wait.ts'

const log = createLogger('test', 'warn')

async function node (secret = 's', bootstrap: string[] = []): Promise<MeshNetwork> {
  const net = new MeshNetwork({ privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], meshSecret: secret, mdns: false, bootstrap, log })
  await net.start()
  return net
}

const addrOf = (n: MeshNetwork): string => n.addresses()[0] ?? assert.fail('no address')

const beacon: Beacon = {
  v: 1, seq: 1, systems: ['x86_64-linux'], features: [], mandatoryFeatures: [], maxJobs: 2, running: 0, queued: 3,
  speedFactor: 1, load: 0.5, freeDiskBytes: 1e9, diskLow: false, building: [], addresses: []
}

describe('mesh network over real libp2p', () => {
  const nodes: MeshNetwork[] = []
  after(async () => { await Promise.all(nodes.map(async n => { await n.stop() })) })

  it('connects nodes that share the mesh secret and delivers valid gossip', async () => {
    const a = await node()
    const b = await node('s', [addrOf(a)])
    nodes.push(a, b)
    await waitFor(() => a.connectedPeers().includes(b.peerId), 10_000, 'b to connect to a')
    const seen: Array<[string, Beacon]> = []
    a.on('beacon', (from, m) => seen.push([from, m]))
    await waitFor(async () => {
      await b.publish(TOPIC_BEACON, beacon)
      return seen.length > 0
    }, 10_000, 'a to receive b\'s beacon', 300)
    assert.equal(seen[0]?.[0], b.peerId)
    assert.equal(seen[0]?.[1].queued, 3)
  })

  it('refuses a node with another mesh secret at the handshake', async () => {
    const a = nodes[0] ?? assert.fail()
    const stranger = await node('other', [addrOf(a)])
    nodes.push(stranger)
    // The control: the same dial with the right secret connects, so the refusal below is the secret's.
    const friend = await node('s', [addrOf(a)])
    nodes.push(friend)
    await waitFor(() => a.connectedPeers().includes(friend.peerId), 10_000, 'a node with the right secret to connect')
    await new Promise(resolve => setTimeout(resolve, 1500))
    assert.equal(a.connectedPeers().includes(stranger.peerId), false)
    assert.equal(stranger.connectedPeers().length, 0)
  })

  it('moves 64 MiB over one stream intact, with framing and limits', async () => {
    const [a, b] = nodes
    assert.ok(a !== undefined && b !== undefined)
    const size = 64 * 1024 * 1024
    const check = validator('hello', obj({ size: int(0) }))
    let served = ''
    await a.handle('/test/bulk/1', async (ch: StreamChannel) => {
      const req = await ch.readMessage(check, { maxBytes: 100 })
      const h = createHash('sha256')
      const chunk = Buffer.alloc(256 * 1024)
      for (let sent = 0; sent < req.size; sent += chunk.length) {
        chunk.fill(sent & 0xff)
        h.update(chunk)
        await ch.write(chunk)
      }
      served = h.digest('hex')
    })
    const ch = await b.open(a.peerId, '/test/bulk/1')
    await ch.writeMessage({ size })
    const h = createHash('sha256')
    let got = 0
    for await (const part of ch.readRaw(size)) {
      h.update(part)
      got += part.byteLength
    }
    await ch.close()
    assert.equal(got, size)
    await waitFor(() => served !== '', 5000, 'the server to finish')
    assert.equal(h.digest('hex'), served)
  })

  it('rejects a message over the size limit without reading it', async () => {
    const [a, b] = nodes
    assert.ok(a !== undefined && b !== undefined)
    let error: Error | undefined
    await a.handle('/test/limit/1', async (ch) => {
      try {
        await ch.readMessage((v) => v, { maxBytes: 1024 })
      } catch (err) {
        error = err as Error
        throw err
      }
    })
    const ch = await b.open(a.peerId, '/test/limit/1')
    await ch.writeMessage({ junk: 'x'.repeat(5000) })
    await waitFor(() => error !== undefined, 5000, 'the handler to reject')
    assert.ok(error instanceof MessageTooLargeError, `got ${error?.name ?? ''}`)
    assert.match(error.message, /5\d{3} bytes exceeds the limit of 1024/)
  })
})
