// The link to the mesh's signer: which shared cache and signer this node's configuration admits
// (cacheChoice), offering what it built to that signer, and — when this node is the signer — its
// binary cache, HTTP server and sign protocol.
import { MAX_CACHE_URLS, SIGN_QUEUE_INTERVAL_MS } from '../../protocols/mesh/constants.ts'
import type { Beacon, SignOffer, SignReply } from '../../protocols/mesh/messages.ts'
import { formatPublicKey, type PublicKey } from '../../protocols/nix/signing-key.ts'
import { BinaryCache } from '../cache/binary-cache.ts'
import type { CacheRef } from '../cache/cache-client.ts'
import { startCacheServer, type CacheServer } from '../cache/cache-server.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { SignQueue } from '../signer/sign-queue.ts'
import { Signer, type NarSource } from '../signer/signer.ts'
import type { Logger } from '../log.ts'
import type { MeshNetwork } from './network.ts'
import type { CacheChoice, NodeOptions } from './node-options.ts'
import type { PeerTable } from './peer-table.ts'
import { requestSign, serveSign } from './protocols/sign.ts'
import type { CacheStatus, SignerStatus } from './reports.ts'
import type { Unserve } from './rpc.ts'
import { toMessage } from '../nix/path-info-message.ts'
import type { SignerFigures } from '../observe/metrics.ts'

export interface SignerLinkInit {
  network: MeshNetwork
  store: StoreBackend
  peers: PeerTable
  signQueue: SignQueue
  /** This node's own key (a signer trusts it). */
  selfKey: PublicKey
  /** With `signer`, this node is the signer; the rest say which signer and cache it admits. */
  options: Pick<NodeOptions, 'signer' | 'trustedKeys' | 'cachePublicKeys' | 'cacheUrl'>
  log: Logger
}

export class SignerLink {
  private readonly init: SignerLinkInit
  private signer: Signer | undefined
  private cache: BinaryCache | undefined
  private cacheServer: CacheServer | undefined
  private unserve: Unserve | undefined
  private timer: NodeJS.Timeout | undefined
  private stopping = false
  /** Signers ignored for an unconfigured cache key, logged once each (`peer key`). */
  private readonly ignoredSigners = new Set<string>()

  constructor (init: SignerLinkInit) {
    this.init = init
  }

  /** Opens the cache and serves the sign protocol when this node is the signer. */
  async start (): Promise<void> {
    const opts = this.init.options.signer
    if (opts !== undefined) {
      const log = this.init.log.child('signer')
      this.cache = await BinaryCache.open(opts.cacheDir, { log: log.child('cache'), ...(opts.compression !== undefined ? { compression: opts.compression } : {}) })
      this.signer = new Signer({
        cache: this.cache,
        cacheKey: opts.cacheKey,
        ...(this.init.options.trustedKeys !== undefined ? { trustedKeys: this.init.options.trustedKeys } : {}),
        selfKey: this.init.selfKey,
        log
      })
      if (opts.cacheListen !== undefined) {
        this.cacheServer = await startCacheServer(this.cache, { ...opts.cacheListen, log: log.child('http') })
        log.info(`binary cache at ${this.cacheServer.url}, key ${this.signer.publicCacheKey()}`)
      }
      this.unserve = await serveSign(this.init.network, this.signer, log)
    }
  }

  /** Starts offering built outputs to the signer. */
  startOffering (): void {
    this.timer = setInterval(() => { void this.offerToSigner() }, SIGN_QUEUE_INTERVAL_MS)
  }

  /** Stops offering and serving; the cache stays open until close(), after the network stops. */
  async stop (): Promise<void> {
    this.stopping = true
    clearInterval(this.timer)
    await this.unserve?.()
    await this.cacheServer?.close()
  }

  async close (): Promise<void> {
    await this.cache?.close()
  }

  /** This node's signer fields for its beacon, when it is the signer. */
  selfSigner (): Beacon['signer'] {
    if (this.signer === undefined || this.cache === undefined) return undefined
    const { paths, narBytes, hits, misses } = this.cache.stats()
    return { cacheKey: this.signer.publicCacheKey(), cacheUrls: this.cacheUrls(), paths, narBytes, hits, misses }
  }

  /** The cache's figures for the metrics, when this node is the signer. */
  figures (): SignerFigures | undefined {
    if (this.signer === undefined || this.cache === undefined) return undefined
    const { paths, narBytes, hits, misses } = this.cache.stats()
    return { paths, narBytes, hits, misses, refused: this.signer.counters.rejected }
  }

  /**
   * The shared cache and its signer, from this node's own configuration only: this node when it
   * is the signer; else the signer peer whose beacon's cache key is one of --cache-public-key;
   * --cache-url names the cache directly. A signer announcing another key is ignored.
   */
  cacheChoice (): CacheChoice {
    const ignored: CacheChoice['ignored'] = []
    const self = this.selfSigner()
    if (self !== undefined) {
      const url = self.cacheUrls[0]
      return {
        ...(url !== undefined ? { ref: { url, publicKey: self.cacheKey } } : {}),
        signer: { peerId: this.init.network.peerId, signer: self },
        reason: 'this node is the signer',
        ignored
      }
    }
    const configured = new Set(this.init.options.cachePublicKeys ?? [])
    let signer: CacheChoice['signer']
    for (const p of this.init.peers.list()) {
      const b = p.beacon.signer
      if (b === undefined) continue
      if (!configured.has(b.cacheKey)) {
        ignored.push({ peerId: p.peerId, cacheKey: b.cacheKey, reason: configured.size === 0 ? 'no --cache-public-key is configured' : 'its cache key is not one of --cache-public-key' })
        continue
      }
      signer ??= { peerId: p.peerId, signer: b }
    }
    for (const i of ignored) {
      const key = `${i.peerId} ${i.cacheKey}`
      if (this.ignoredSigners.has(key)) continue
      this.ignoredSigners.add(key)
      this.init.log.warn(`ignoring the signer ${i.peerId}: it announces cache key ${i.cacheKey}, and ${i.reason}`)
    }
    const keys = [...configured].join(' ')
    if (this.init.options.cacheUrl !== undefined && keys !== '') {
      return { ref: { url: this.init.options.cacheUrl, publicKey: keys }, ...(signer !== undefined ? { signer } : {}), reason: '--cache-url', ignored }
    }
    const url = signer?.signer.cacheUrls[0]
    if (signer !== undefined) {
      return { ...(url !== undefined ? { ref: { url, publicKey: signer.signer.cacheKey } } : {}), signer, reason: 'its cache key is configured (--cache-public-key)', ignored }
    }
    return { reason: configured.size === 0 ? 'no --cache-public-key is configured' : 'no signer with a configured cache key is online', ignored }
  }

  /** The shared cache as a substituter, when one is configured or a trusted signer serves one. */
  cacheRef (): CacheRef | undefined {
    return this.cacheChoice().ref
  }

  /** The signer and cache as `status` shows them. */
  status (): { signer?: SignerStatus, cache: CacheStatus } {
    const choice = this.cacheChoice()
    const cache: CacheStatus = { reason: choice.reason, ignored: choice.ignored, ...(choice.ref !== undefined ? { url: choice.ref.url } : {}) }
    const target = choice.signer
    if (target === undefined) return { cache }
    const { hits, misses } = target.signer
    const status: SignerStatus = {
      peerId: target.peerId,
      cacheKey: target.signer.cacheKey,
      cacheUrls: target.signer.cacheUrls,
      paths: target.signer.paths,
      narBytes: target.signer.narBytes,
      hits,
      misses,
      hitRate: hits + misses === 0 ? null : hits / (hits + misses)
    }
    if (target.peerId === this.init.network.peerId && this.signer !== undefined) {
      status.trust = { policy: this.signer.trustPolicy(), keys: this.signer.trusted().map(k => formatPublicKey(k)) }
      status.rejections = this.signer.rejections()
    }
    return { signer: status, cache }
  }

  /** URLs peers can reach the HTTP cache at: the listen host, or every address libp2p listens on. */
  private cacheUrls (): string[] {
    const server = this.cacheServer
    const listen = this.init.options.signer?.cacheListen
    if (server === undefined || listen === undefined) return []
    if (listen.host !== '0.0.0.0' && listen.host !== '::') return [server.url]
    const hosts = new Set<string>()
    for (const a of this.init.network.addresses()) {
      const m = /^\/ip4\/([0-9.]+)\//.exec(a)
      if (m?.[1] !== undefined && !m[1].startsWith('127.')) hosts.add(m[1])
    }
    return [...hosts].slice(0, MAX_CACHE_URLS).map(h => `http://${h}:${server.port}`)
  }

  /** Offers what this node built to the signer; with none online the outputs keep waiting. */
  private async offerToSigner (): Promise<void> {
    const { signQueue, network } = this.init
    if (this.stopping || signQueue.pending() === 0) return
    const target = this.cacheChoice().signer
    if (target === undefined) {
      this.init.log.debug(`no signer online; ${signQueue.pending()} output(s) wait`)
      return
    }
    const selfId = network.peerId
    const signer = this.signer
    const send = target.peerId === selfId && signer !== undefined
      ? async (offer: SignOffer): Promise<SignReply> => await signer.handleOffer(selfId, offer, this.localNars())
      : async (offer: SignOffer): Promise<SignReply> => await requestSign(network, target.peerId, offer)
    try {
      await signQueue.drain(send)
    } catch (err) {
      this.init.log.warn(`offering outputs to the signer ${target.peerId} failed: ${(err as Error).message}`)
    }
  }

  /** NARs from this node's own store, for its own signer. */
  private localNars (): NarSource {
    const store = this.init.store
    return async (paths, consume) => {
      for (const p of paths) {
        const info = await store.queryPathInfo(p)
        if (info === null) throw new Error(`${p} is no longer valid here`)
        await consume(toMessage(info), store.exportNar(p))
      }
    }
  }
}
