// The one module that talks to libp2p. It starts the host (TCP, Noise with the mesh prologue,
// Yamux, mDNS, identify, ping, gossipsub), dials what mDNS finds, and hands the rest of the node
// validated gossip as typed events and protocol streams as StreamChannels. Nothing outside this
// file sees a libp2p object.
import { createHash } from 'node:crypto'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { mdns } from '@libp2p/mdns'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub, TopicValidatorResult, type GossipSub } from '@libp2p/gossipsub'
import { KEEP_ALIVE, type PeerId, type PrivateKey, type Stream, type Connection } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { StreamChannel } from '../../protocols/mesh/stream-channel.ts'
import { SchemaError } from '../../protocols/mesh/schema.ts'
import {
  DIAL_TIMEOUT_MS, MAX_GOSSIP_BYTES, MDNS_INTERVAL_MS, MDNS_SERVICE_TAG, MESH_PROLOGUE_LABEL,
  TOPIC_BEACON, TOPIC_OFFER
} from '../../protocols/mesh/constants.ts'
import { validateBeacon, validateOffer, type Beacon, type Offer } from '../../protocols/mesh/messages.ts'
import type { Logger } from '../log.ts'

export interface NetworkInit {
  privateKey: PrivateKey
  listen: string[]
  meshSecret: string
  /** Extra peers to dial at start (multiaddrs with /p2p/), for networks without multicast. */
  bootstrap?: string[]
  mdns?: boolean
  log: Logger
}

export interface NetworkEvents {
  beacon: (from: string, beacon: Beacon) => void
  offer: (from: string, offer: Offer) => void
  'peer-connected': (peerId: string) => void
  'peer-disconnected': (peerId: string) => void
}

export type ProtocolHandler = (channel: StreamChannel, peerId: string) => Promise<void>

/** The Noise prologue both ends must share: a machine without the mesh secret fails the handshake. */
export function meshPrologue (secret: string): Uint8Array {
  return createHash('sha256').update(MESH_PROLOGUE_LABEL).update(secret).digest()
}

export class MeshNetwork {
  private readonly init: NetworkInit
  private node: Libp2p<{ pubsub: GossipSub }> | undefined
  private readonly listeners: { [K in keyof NetworkEvents]: Array<NetworkEvents[K]> } = {
    beacon: [], offer: [], 'peer-connected': [], 'peer-disconnected': []
  }

  constructor (init: NetworkInit) {
    this.init = init
  }

  on<K extends keyof NetworkEvents> (event: K, listener: NetworkEvents[K]): void {
    this.listeners[event].push(listener)
  }

  get peerId (): string {
    return this.libp2p.peerId.toString()
  }

  addresses (): string[] {
    return this.libp2p.getMultiaddrs().map(a => a.toString())
  }

  connectedPeers (): string[] {
    return this.libp2p.getPeers().map(p => p.toString())
  }

  /** Addresses we are connected to a peer on, for status. */
  peerAddresses (peerId: string): string[] {
    try {
      return this.libp2p.getConnections(peerIdFromString(peerId)).map(c => c.remoteAddr.toString())
    } catch {
      return []
    }
  }

  async start (): Promise<void> {
    const log = this.init.log
    const node = await createLibp2p({
      privateKey: this.init.privateKey,
      addresses: { listen: this.init.listen },
      transports: [tcp()],
      connectionEncrypters: [noise({ prologueBytes: meshPrologue(this.init.meshSecret) })],
      streamMuxers: [yamux()],
      peerDiscovery: this.init.mdns === false ? [] : [mdns({ serviceTag: MDNS_SERVICE_TAG, interval: MDNS_INTERVAL_MS })],
      services: {
        identify: identify(),
        ping: ping(),
        pubsub: gossipsub({
          allowPublishToZeroTopicPeers: true,
          emitSelf: false,
          // Small meshes: send to every subscribed peer rather than a sampled subset.
          floodPublish: true,
          // Our messages are at most MAX_GOSSIP_BYTES, but gossipsub's own control frames (IHAVE
          // lists) grow with the mesh; a frame over this limit silences the peer's gossip stream.
          maxInboundDataLength: 1024 * 1024
        })
      }
    })
    this.node = node

    node.addEventListener('peer:discovery', (evt) => {
      const { id, multiaddrs } = evt.detail
      if (id.equals(node.peerId)) return
      void this.dialAndKeep(id, multiaddrs.map(m => m.toString()))
    })
    node.addEventListener('peer:connect', (evt) => { this.emit('peer-connected', evt.detail.toString()) })
    node.addEventListener('peer:disconnect', (evt) => { this.emit('peer-disconnected', evt.detail.toString()) })

    const pubsub = node.services.pubsub
    // Validators run before a message is delivered or forwarded: garbage is rejected (and the
    // sender's gossip score drops), never passed on.
    pubsub.topicValidators.set(TOPIC_BEACON, (_peer, msg) => this.checkGossip(msg.data, validateBeacon))
    pubsub.topicValidators.set(TOPIC_OFFER, (_peer, msg) => this.checkGossip(msg.data, validateOffer))
    pubsub.addEventListener('message', (evt) => {
      const msg = evt.detail
      if (msg.type !== 'signed') return
      const from = msg.from.toString()
      try {
        const value: unknown = JSON.parse(Buffer.from(msg.data).toString('utf8'))
        if (msg.topic === TOPIC_BEACON) this.emit('beacon', from, validateBeacon(value))
        else if (msg.topic === TOPIC_OFFER) this.emit('offer', from, validateOffer(value))
      } catch (err) {
        log.debug(`dropped gossip on ${msg.topic} from ${from}: ${(err as Error).message}`)
      }
    })
    pubsub.subscribe(TOPIC_BEACON)
    pubsub.subscribe(TOPIC_OFFER)
    await node.start()
    log.info(`peer id ${node.peerId.toString()}`)
    for (const a of node.getMultiaddrs()) log.info(`listening on ${a.toString()}`)
    for (const addr of this.init.bootstrap ?? []) {
      const ma = multiaddr(addr)
      const id = ma.getComponents().find(c => c.name === 'p2p')?.value
      if (id === undefined) {
        log.warn(`bootstrap address ${addr} has no /p2p/ peer id; skipped`)
        continue
      }
      void this.dialAndKeep(peerIdFromString(id), [addr])
    }
  }

  async stop (): Promise<void> {
    await this.node?.stop()
  }

  async publish (topic: typeof TOPIC_BEACON | typeof TOPIC_OFFER, message: Beacon | Offer): Promise<void> {
    const data = Buffer.from(JSON.stringify(message), 'utf8')
    try {
      await this.libp2p.services.pubsub.publish(topic, data)
    } catch (err) {
      this.init.log.debug(`publish on ${topic} failed: ${(err as Error).message}`)
    }
  }

  /** Registers a stream protocol; each inbound stream is handled with a fresh channel. */
  async handle (protocol: string, handler: ProtocolHandler, options: { maxInboundStreams?: number } = {}): Promise<void> {
    await this.libp2p.handle(protocol, async (stream: Stream, connection: Connection) => {
      const channel = new StreamChannel(stream)
      const peer = connection.remotePeer.toString()
      try {
        await handler(channel, peer)
        await channel.close()
      } catch (err) {
        const e = err as Error
        this.init.log.debug(`${protocol} from ${peer}: ${e.name}: ${e.message}`)
        channel.abort(e)
      }
    }, { maxInboundStreams: options.maxInboundStreams ?? 32 })
  }

  /** Opens a stream to a peer for a protocol. */
  async open (peerId: string, protocol: string, signal?: AbortSignal): Promise<StreamChannel> {
    const stream = await this.libp2p.dialProtocol(peerIdFromString(peerId), protocol, {
      signal: signal ?? AbortSignal.timeout(DIAL_TIMEOUT_MS)
    })
    return new StreamChannel(stream)
  }

  private get libp2p (): Libp2p<{ pubsub: GossipSub }> {
    if (this.node === undefined) throw new Error('network not started')
    return this.node
  }

  private checkGossip (data: Uint8Array, validate: (v: unknown) => unknown): TopicValidatorResult {
    if (data.byteLength > MAX_GOSSIP_BYTES) return TopicValidatorResult.Reject
    try {
      validate(JSON.parse(Buffer.from(data).toString('utf8')))
      return TopicValidatorResult.Accept
    } catch (err) {
      if (err instanceof SchemaError || err instanceof SyntaxError) return TopicValidatorResult.Reject
      return TopicValidatorResult.Ignore
    }
  }

  private async dialAndKeep (id: PeerId, addrs: string[]): Promise<void> {
    const node = this.libp2p
    try {
      // KEEP_ALIVE makes libp2p redial the peer when the connection drops.
      await node.peerStore.merge(id, { multiaddrs: addrs.map(a => multiaddr(a)), tags: { [KEEP_ALIVE]: { value: 1 } } })
      if (node.getConnections(id).length > 0) return
      await node.dial(id, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) })
      this.init.log.debug(`connected to ${id.toString()}`)
    } catch (err) {
      this.init.log.debug(`dial ${id.toString()} failed: ${(err as Error).message}`)
    }
  }

  private emit<K extends keyof NetworkEvents> (event: K, ...args: Parameters<NetworkEvents[K]>): void {
    for (const l of this.listeners[event]) {
      try {
        (l as (...a: Parameters<NetworkEvents[K]>) => void)(...args)
      } catch (err) {
        this.init.log.error(`${event} listener failed: ${(err as Error).stack ?? String(err)}`)
      }
    }
  }
}
