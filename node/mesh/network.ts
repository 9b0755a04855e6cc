// The one module that talks to libp2p. It starts the host (TCP, Noise with the mesh prologue,
// Yamux, mDNS, identify, ping, gossipsub), dials what mDNS finds, and hands the rest of the node
// validated gossip as typed events and protocol streams as StreamChannels. Nothing outside this
// file sees a libp2p object. It also guards the node: inbound streams are limited per protocol
// and rate-limited per peer, and a peer that sends malformed messages or bad data is cut off
// (penalty-box.ts) by closing its connections and refusing new ones in the connection gater.
import { createHash } from 'node:crypto'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { mdns } from '@libp2p/mdns'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub, TopicValidatorResult, type GossipSub } from '@libp2p/gossipsub'
import { createTopicScoreParams } from '@libp2p/gossipsub/score'
import { KEEP_ALIVE, type PeerId, type PrivateKey, type Stream, type Connection } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { MalformedMessageError, MessageTooLargeError, StreamChannel } from '../../protocols/mesh/stream-channel.ts'
import { SchemaError } from '../../protocols/mesh/schema.ts'
import {
  DEFAULT_INBOUND_LIMIT, DIAL_TIMEOUT_MS, GOSSIP_GRAYLIST_THRESHOLD, GOSSIP_INVALID_MESSAGE_DECAY, GOSSIP_INVALID_MESSAGE_WEIGHT,
  INBOUND_LIMITS, MAX_GOSSIP_BYTES, MDNS_INTERVAL_MS, MDNS_SERVICE_TAG, MESH_PROLOGUE_LABEL, PENALTY_DURATION_MS,
  PENALTY_FORGET_AFTER_MS, PENALTY_MAX_DURATION_MS, PENALTY_MAX_PEERS, PENALTY_STRIKE_WINDOW_MS, PENALTY_STRIKES,
  TOPIC_BEACON, TOPIC_OFFER, MAX_GOSSIP_FRAME_BYTES, REDIAL_SLACK_MS, REFUSALS_PER_LOG_LINE, OFFENCE_REASON_CHARS
} from '../../protocols/mesh/constants.ts'
import { PenaltyBox, type Offence, type PenaltyBoxOptions } from './penalty-box.ts'
import { RateLimiter } from './rate-limiter.ts'
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
  /** Overrides of the penalty box's settings (tests shorten them). */
  penalties?: Partial<PenaltyBoxOptions>
  /** The clock of rate limits and penalties; Date.now unless a test injects one. */
  now?: () => number
}

/** A peer cut off for misbehaving, as status shows it. */
export interface PeerPenalty {
  peer: string
  reason: string
  since: string
  until: string
  /** Times this peer was cut off lately (each doubles the next penalty). */
  count: number
}

/** Inbound streams refused for going over a per-peer rate, since start. */
export type RefusedStreams = Record<string, number>

/** Errors that show the peer sent something malformed (not a stream that ended or timed out). */
function isMalformed (err: unknown): boolean {
  return err instanceof SchemaError || err instanceof MessageTooLargeError || err instanceof MalformedMessageError
}

export interface NetworkEvents {
  beacon: (from: string, beacon: Beacon) => void
  offer: (from: string, offer: Offer) => void
  'peer-connected': (peerId: string) => void
  'peer-disconnected': (peerId: string) => void
  /** NAR bytes streamed with a peer (store-transfer.ts reports them; the metrics count them). */
  'nar-bytes': (direction: 'sent' | 'received', peer: string, bytes: number) => void
}

/** An inbound stream refused because its peer opens them faster than its protocol's rate. */
export class RateLimitedError extends Error {
  override name = 'RateLimitedError'
}

/** A stream from a peer serving a penalty (opened before its connection was closed). */
export class PeerCutOffError extends Error {
  override name = 'PeerCutOffError'
}

export type ProtocolHandler = (channel: StreamChannel, peerId: string) => Promise<void>

/** The Noise prologue both ends must share: a machine without the mesh secret fails the handshake. */
export function meshPrologue (secret: string): Uint8Array {
  return createHash('sha256').update(MESH_PROLOGUE_LABEL).update(secret).digest()
}

export class MeshNetwork {
  private readonly init: NetworkInit
  private node: Libp2p<{ pubsub: GossipSub }> | undefined
  private readonly now: () => number
  private readonly penaltyBox: PenaltyBox
  private readonly limiters = new Map<string, RateLimiter>()
  private readonly redials = new Map<string, NodeJS.Timeout>()
  private readonly listeners: { [K in keyof NetworkEvents]: Array<NetworkEvents[K]> } = {
    beacon: [], offer: [], 'peer-connected': [], 'peer-disconnected': [], 'nar-bytes': []
  }

  constructor (init: NetworkInit) {
    this.init = init
    this.now = init.now ?? Date.now
    this.penaltyBox = new PenaltyBox({
      durationMs: PENALTY_DURATION_MS,
      maxDurationMs: PENALTY_MAX_DURATION_MS,
      strikes: PENALTY_STRIKES,
      strikeWindowMs: PENALTY_STRIKE_WINDOW_MS,
      forgetAfterMs: PENALTY_FORGET_AFTER_MS,
      maxPeers: PENALTY_MAX_PEERS,
      ...init.penalties
    })
  }

  /** Peers cut off now, soonest to return first. */
  penalties (): PeerPenalty[] {
    return this.penaltyBox.active(this.now()).map(p => ({
      peer: p.peer, reason: p.reason, since: new Date(p.since).toISOString(), until: new Date(p.until).toISOString(), count: p.count
    }))
  }

  isPenalised (peerId: string): boolean {
    return this.penaltyBox.isBoxed(peerId, this.now())
  }

  /** Inbound streams refused per protocol for going over a peer's rate. */
  refusedStreams (): RefusedStreams {
    const out: RefusedStreams = {}
    for (const [protocol, l] of this.limiters) if (l.refused > 0) out[protocol] = l.refused
    return out
  }

  /**
   * A peer served data that contradicts what it claimed (a NAR whose hash is not its NarHash):
   * cut it off at once. Called where such data is caught (store-transfer.ts).
   */
  penalise (peerId: string, reason: string): void {
    this.offence(peerId, 'bad-data', reason)
  }

  on<K extends keyof NetworkEvents> (event: K, listener: NetworkEvents[K]): void {
    this.listeners[event].push(listener)
  }

  /** Tells the 'nar-bytes' listeners of NAR bytes streamed over a stream of this network. */
  countNarBytes (direction: 'sent' | 'received', peer: string, bytes: number): void {
    this.emit('nar-bytes', direction, peer, bytes)
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
      // A penalised peer gets no connection either way until its penalty ends.
      connectionGater: {
        denyDialPeer: (id) => this.isPenalised(id.toString()),
        denyInboundEncryptedConnection: (id) => this.isPenalised(id.toString()),
        denyOutboundEncryptedConnection: (id) => this.isPenalised(id.toString())
      },
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
          maxInboundDataLength: MAX_GOSSIP_FRAME_BYTES,
          // Rejected messages on our topics lower the sender's score (P4); other terms are off
          // (constants.ts says why). Below the graylist threshold its RPCs are ignored.
          scoreParams: {
            IPColocationFactorWeight: 0,
            topics: Object.fromEntries([TOPIC_BEACON, TOPIC_OFFER].map(t => [t, createTopicScoreParams({
              topicWeight: 1,
              timeInMeshWeight: 0,
              firstMessageDeliveriesWeight: 0,
              meshMessageDeliveriesWeight: 0,
              meshFailurePenaltyWeight: 0,
              // With penalties off (a test), invalid gossip is not scored either.
              invalidMessageDeliveriesWeight: (this.init.penalties?.durationMs ?? PENALTY_DURATION_MS) > 0 ? GOSSIP_INVALID_MESSAGE_WEIGHT : 0,
              invalidMessageDeliveriesDecay: GOSSIP_INVALID_MESSAGE_DECAY
            })]))
          },
          scoreThresholds: { graylistThreshold: GOSSIP_GRAYLIST_THRESHOLD }
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
    pubsub.topicValidators.set(TOPIC_BEACON, (peer, msg) => this.checkGossip(peer.toString(), TOPIC_BEACON, msg.data, validateBeacon))
    pubsub.topicValidators.set(TOPIC_OFFER, (peer, msg) => this.checkGossip(peer.toString(), TOPIC_OFFER, msg.data, validateOffer))
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
    for (const t of this.redials.values()) clearTimeout(t)
    this.redials.clear()
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

  /**
   * Registers a stream protocol; each inbound stream is handled with a fresh channel. Limits
   * (INBOUND_LIMITS): streams at once per connection, and a per-peer rate; a stream over the
   * rate is aborted before a byte is read. A peer whose stream fails its schema gets a strike.
   */
  async handle (protocol: string, handler: ProtocolHandler, options: { maxInboundStreams?: number } = {}): Promise<void> {
    const limits = INBOUND_LIMITS[protocol] ?? DEFAULT_INBOUND_LIMIT
    const limiter = new RateLimiter(limits)
    this.limiters.set(protocol, limiter)
    await this.libp2p.handle(protocol, async (stream: Stream, connection: Connection) => {
      const peer = connection.remotePeer.toString()
      if (this.isPenalised(peer)) {
        // Its connections are being closed; nothing it opens meanwhile is served.
        stream.abort(new PeerCutOffError('this peer is cut off for misbehaving'))
        return
      }
      if (!limiter.take(peer, this.now())) {
        // Logged once per ten refusals: a flood must not become a flood of log lines.
        if (limiter.refusedFor(peer) % REFUSALS_PER_LOG_LINE === 1) this.init.log.warn(`${protocol} from ${peer}: over its rate of ${limits.perSecond}/s; refused ${limiter.refusedFor(peer)} stream(s)`)
        stream.abort(new RateLimitedError(`over the rate of ${limits.perSecond} streams/s`))
        return
      }
      const channel = new StreamChannel(stream)
      try {
        await handler(channel, peer)
        await channel.close()
      } catch (err) {
        const e = err as Error
        this.init.log.debug(`${protocol} from ${peer}: ${e.name}: ${e.message}`)
        channel.abort(e)
        if (isMalformed(e)) this.offence(peer, 'invalid-message', `malformed ${protocol} stream: ${e.message.slice(0, OFFENCE_REASON_CHARS)}`)
      }
    }, { maxInboundStreams: options.maxInboundStreams ?? limits.maxInboundStreams })
  }

  /** Removes the handler of a protocol registered with handle(); its streams are no longer served. */
  async unhandle (protocol: string): Promise<void> {
    if (this.node === undefined) return
    await this.node.unhandle(protocol)
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

  /**
   * Honest nodes validate before forwarding, so the peer that handed us an invalid message
   * (`from`, the propagation source) is the one that made it: it gets a strike.
   */
  private checkGossip (from: string, topic: string, data: Uint8Array, validate: (v: unknown) => unknown): TopicValidatorResult {
    if (data.byteLength > MAX_GOSSIP_BYTES) {
      this.offence(from, 'invalid-message', `gossip on ${topic} of ${data.byteLength} bytes, over the limit of ${MAX_GOSSIP_BYTES}`)
      return TopicValidatorResult.Reject
    }
    try {
      validate(JSON.parse(Buffer.from(data).toString('utf8')))
      return TopicValidatorResult.Accept
    } catch (err) {
      if (err instanceof SchemaError || err instanceof SyntaxError) {
        this.offence(from, 'invalid-message', `malformed gossip on ${topic}: ${(err as Error).message.slice(0, OFFENCE_REASON_CHARS)}`)
        return TopicValidatorResult.Reject
      }
      return TopicValidatorResult.Ignore
    }
  }

  /** Records an offence; a peer it boxes is disconnected now and redialled when its penalty ends. */
  private offence (peerId: string, kind: Offence, reason: string): void {
    const now = this.now()
    const penalty = this.penaltyBox.offence(peerId, kind, reason, now)
    if (penalty === undefined) {
      this.init.log.info(`strike against ${peerId}: ${reason}`)
      return
    }
    // A zero-length penalty (penalties.durationMs 0) is only logged: nothing to enforce.
    if (penalty.until <= now) {
      this.init.log.warn(`would cut off ${peerId} (penalties are off): ${reason}`)
      return
    }
    this.init.log.warn(`cut off ${peerId} until ${new Date(penalty.until).toISOString()}: ${reason}`)
    const node = this.node
    if (node === undefined) return
    let id: PeerId
    try { id = peerIdFromString(peerId) } catch { return }
    void node.hangUp(id).catch((err: unknown) => { this.init.log.debug(`hang up ${peerId}: ${(err as Error).message}`) })
    // mDNS rediscovers LAN peers by itself; a bootstrap peer needs a dial once it may return.
    clearTimeout(this.redials.get(peerId))
    const timer = setTimeout(() => {
      this.redials.delete(peerId)
      void this.dialAndKeep(id, [])
    }, penalty.until - now + REDIAL_SLACK_MS)
    timer.unref()
    this.redials.set(peerId, timer)
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
