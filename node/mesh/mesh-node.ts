// The composition root of a running node: the scheduler in the middle, the network, the Nix store
// and LevelDB at the edges. Every event goes through dispatch(), which feeds the scheduler and
// carries out its decisions.
import { randomUUID } from 'node:crypto'
import { mkdir, statfs } from 'node:fs/promises'
import { loadavg } from 'node:os'
import { join } from 'node:path'
import { CliStore } from '../nix/cli-store.ts'
import { exec } from '../nix/exec.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import { Scheduler, SCHEDULER_DEFAULTS, type BuildOutcome, type Decision, type SchedulerEvent } from '../scheduler/scheduler.ts'
import { TERMINAL_STATES, type Job, type WorkItem } from '../scheduler/job.ts'
import type { MachineCapabilities } from '../scheduler/matching.ts'
import { BEACON_INTERVAL_MS, OPEN_MESH_SECRET, PEER_EXPIRY_MS, TOPIC_BEACON, TOPIC_OFFER } from '../../protocols/mesh/constants.ts'
import { LEASE, RESULT, SIGN, STEAL } from '../../protocols/mesh/request-protocols.ts'
import type { Beacon, ResultReport, SignOffer, SignReply } from '../../protocols/mesh/messages.ts'
import { SIGN_QUEUE_INTERVAL_MS } from '../../protocols/mesh/constants.ts'
import { formatPublicKey, parsePublicKey, type PublicKey, type SecretKey } from '../../protocols/nix/signing-key.ts'
import { loadOrCreateNodeKey, type NodeKey } from '../signer/node-key.ts'
import { SignQueue } from '../signer/sign-queue.ts'
import { Signer, type NarSource } from '../signer/signer.ts'
import { BinaryCache } from '../cache/binary-cache.ts'
import { startCacheServer, type CacheServer } from '../cache/cache-server.ts'
import { cachedPaths, substituteFrom, type CacheRef } from '../cache/cache-client.ts'
import type { CompressionName } from '../cache/compression.ts'
import { MeshNetwork } from './network.ts'
import type { PenaltyBoxOptions } from './penalty-box.ts'
import { PeerTable } from './peer-table.ts'
import { call, serve } from './rpc.ts'
import { fetchClosure, pullNars, serveStore, toMessage } from './store-transfer.ts'
import type { PathTrust } from './path-trust.ts'
import { runWorkItem } from './builder.ts'
import { planSubmission } from './planner.ts'
import { loadOrCreateIdentity } from './identity.ts'
import { StateDb, type SubmissionRecord } from '../state/state-db.ts'
import type { Logger } from '../log.ts'
import { buildReport, type CacheStatus, type NodeFields, type SignerStatus, type StatusReport, type SubmissionReport } from './reports.ts'

export interface SignerOptions {
  cacheKey: SecretKey
  cacheDir: string
  /** Where the HTTP binary cache listens; none when absent. */
  cacheListen?: { host: string, port: number }
  compression?: CompressionName
}

export interface NodeOptions {
  dataDir: string
  listen: string[]
  capabilities: MachineCapabilities
  maxJobs: number
  speedFactor: number
  meshSecret: string
  bootstrap?: string[]
  mdns?: boolean
  /** Overrides of the penalty box for misbehaving peers (tests; a durationMs of 0 only logs). */
  penalties?: Partial<PenaltyBoxOptions>
  leaseMs?: number
  /** Below this many free bytes in the Nix store the node takes no work. */
  minFreeDiskBytes: number
  log: Logger
  store?: StoreBackend
  /** Makes this node the mesh's signing node, holding the shared binary cache. */
  signer?: SignerOptions
  /**
   * From --trusted-keys: when given, the only keys (besides this node's own) whose signatures
   * admit a peer's paths into this store and, on the signer, a worker's outputs into the cache.
   * Without it a peer's paths need the signature of the key that peer announces, and the signer
   * trusts only its own key.
   */
  trustedKeys?: PublicKey[]
  /** From --cache-public-key: the keys a shared cache must sign with for this node to use it. */
  cachePublicKeys?: string[]
  /** From --cache-url: the shared cache named directly (needs cachePublicKeys). */
  cacheUrl?: string
}

/** The shared cache this node uses, how it was chosen, and the signers it ignores. */
export interface CacheChoice {
  ref?: CacheRef
  /** The signer outputs are offered to: this node, or a peer whose cache key is configured. */
  signer?: { peerId: string, signer: NonNullable<Beacon['signer']> }
  reason: string
  ignored: Array<{ peerId: string, cacheKey: string, reason: string }>
}

export interface SubmitOptions {
  priority: number
  timeout?: number
  maxSilentTime?: number
  /** Build each job on two different peers; admit outputs only when their NAR hashes agree. */
  checkReproducible?: boolean
}

type SubmissionListener = (report: SubmissionReport) => void

const TICK_MS = 500
/** Changes come in bursts (a finished build readies several jobs): announce once per burst. */
const ANNOUNCE_DELAY_MS = 50
const DISK_CHECK_MS = 10_000
const REPORT_RETRY_MS = 2_000
const REPORT_GIVE_UP_MS = 10 * 60_000

export class MeshNode {
  readonly options: NodeOptions
  readonly network: MeshNetwork
  readonly store: StoreBackend
  private readonly log: Logger
  private readonly db: StateDb
  private scheduler!: Scheduler
  private readonly peers = new PeerTable(PEER_EXPIRY_MS)
  private readonly builds = new Map<string, AbortController>()
  private readonly listeners = new Map<string, Set<SubmissionListener>>()
  private readonly records = new Map<string, SubmissionRecord>()
  private timers: NodeJS.Timeout[] = []
  // Sequence numbers start from the clock so that a restarted node's messages are newer than
  // the ones its peers remember from before.
  private beaconSeq = Date.now()
  private offerSeq = Date.now()
  private lastOfferEmpty = true
  private beaconDue = false
  private freeDiskBytes = 0
  private diskLow = false
  private stopping = false
  private nodeKey!: NodeKey
  private signQueue!: SignQueue
  private signer: Signer | undefined
  /** Signers ignored for an unconfigured cache key, logged once each (`peer key`). */
  private readonly ignoredSigners = new Set<string>()
  private cache: BinaryCache | undefined
  private cacheServer: CacheServer | undefined
  /** Builds this node ran, by outcome, since it started (for status and tests). */
  readonly counters = { built: 0, failed: 0, stolen: 0 }

  private constructor (options: NodeOptions, network: MeshNetwork) {
    this.options = options
    this.log = options.log
    this.network = network
    this.store = options.store ?? new CliStore({ settings: { systemFeatures: allFeatures(options.capabilities) } })
    this.db = new StateDb(join(options.dataDir, 'state'))
  }

  static async start (options: NodeOptions): Promise<MeshNode> {
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 })
    const privateKey = await loadOrCreateIdentity(join(options.dataDir, 'peer.key'))
    const network = new MeshNetwork({
      privateKey,
      listen: options.listen,
      meshSecret: options.meshSecret,
      log: options.log.child('net'),
      ...(options.bootstrap !== undefined ? { bootstrap: options.bootstrap } : {}),
      ...(options.mdns !== undefined ? { mdns: options.mdns } : {}),
      ...(options.penalties !== undefined ? { penalties: options.penalties } : {})
    })
    const node = new MeshNode(options, network)
    await node.startParts()
    return node
  }

  get peerId (): string {
    return this.network.peerId
  }

  private async startParts (): Promise<void> {
    await this.db.open()
    await this.checkDisk()
    await this.network.start()
    this.nodeKey = await loadOrCreateNodeKey(this.options.dataDir, this.network.peerId)
    this.signQueue = new SignQueue(this.db, this.store, this.nodeKey, this.log.child('sign'))
    await this.signQueue.load()
    if (this.options.signer !== undefined) await this.startSigner(this.options.signer)
    this.scheduler = new Scheduler({
      selfId: this.network.peerId,
      capabilities: this.options.capabilities,
      maxJobs: this.options.maxJobs,
      speedFactor: this.options.speedFactor,
      leaseMs: this.options.leaseMs ?? SCHEDULER_DEFAULTS.leaseMs,
      maxAttempts: SCHEDULER_DEFAULTS.maxAttempts,
      stealBackoffMs: SCHEDULER_DEFAULTS.stealBackoffMs,
      seed: hashSeed(this.network.peerId)
    })
    // Resume what the previous run of this node owned.
    const [submissions, jobs] = await Promise.all([this.db.loadSubmissions(), this.db.loadJobs()])
    for (const s of submissions) this.records.set(s.id, s)
    if (submissions.length > 0) {
      const open = submissions.filter(s => s.finished === undefined).length
      this.log.info(`resuming: ${submissions.length} submissions on record, ${open} unfinished`)
      this.dispatch({ type: 'restore', submissions, jobs })
    }
    this.dispatch({ type: 'disk', low: this.diskLow })

    this.network.on('beacon', (from, beacon) => {
      if (this.peers.beacon(from, beacon, Date.now())) this.peerChanged(from)
    })
    this.network.on('offer', (from, offer) => {
      if (this.peers.offer(from, offer, Date.now())) this.peerChanged(from)
    })
    this.network.on('peer-connected', () => { this.announceSoon() })
    await serve(this.network, STEAL, (from, req) => {
      const requestId = randomUUID()
      const decisions = this.dispatch({
        type: 'steal-request', requestId, from, want: req.want,
        capabilities: { systems: req.systems, features: req.features, mandatoryFeatures: req.mandatoryFeatures }
      })
      const grant = decisions.find(d => d.type === 'grant' && d.requestId === requestId)
      const items = grant?.type === 'grant' ? grant.items : []
      if (items.length > 0) this.log.info(`lent ${items.length} job(s) to ${from}`)
      return { leaseMs: this.scheduler.config.leaseMs, items: items.map(({ owner: _owner, ...rest }) => rest) }
    })
    await serve(this.network, LEASE, (from, req) => {
      if (req.release !== undefined && req.release.length > 0) {
        this.log.info(`${from} gave back ${req.release.length} job(s)`)
        this.dispatch({ type: 'lease-release', from, drvPaths: req.release })
      }
      const requestId = randomUUID()
      const decisions = this.dispatch({ type: 'lease-renew', requestId, from, drvPaths: req.renew })
      const reply = decisions.find(d => d.type === 'renew-reply' && d.requestId === requestId)
      return { lost: reply?.type === 'renew-reply' ? reply.lost : req.renew }
    })
    await serve(this.network, RESULT, (from, report) => {
      const known = this.scheduler.job(report.drvPath) !== undefined
      this.dispatch({ type: 'result', from, drvPath: report.drvPath, outcome: outcomeOf(report) })
      return { accepted: known }
    })
    await serveStore(this.network, this.store, this.log.child('store'), this.nodeKey.secret)

    this.timers.push(setInterval(() => { void this.offerToSigner() }, SIGN_QUEUE_INTERVAL_MS))
    this.timers.push(setInterval(() => { this.onTick() }, TICK_MS))
    this.timers.push(setInterval(() => { void this.publishBeacon() }, BEACON_INTERVAL_MS))
    this.timers.push(setInterval(() => { void this.checkDisk().then(() => this.dispatch({ type: 'disk', low: this.diskLow })) }, DISK_CHECK_MS))
    void this.publishBeacon()
  }

  /** Stops: gives stolen jobs back to their owners, aborts builds, closes everything. */
  async stop (): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    for (const t of this.timers) clearInterval(t)
    const byOwner = new Map<string, string[]>()
    for (const item of this.scheduler.stolenItems()) {
      byOwner.set(item.owner, [...(byOwner.get(item.owner) ?? []), item.drvPath])
    }
    for (const c of this.builds.values()) c.abort(new Error('node stopping'))
    await Promise.allSettled([...byOwner].map(async ([owner, drvPaths]) => {
      await call(this.network, owner, LEASE, { renew: [], release: drvPaths })
      this.log.info(`gave ${drvPaths.length} job(s) back to ${owner}`)
    }))
    await this.db.flush()
    await this.cacheServer?.close()
    await this.network.stop()
    await this.cache?.close()
    await this.db.close()
  }

  // --- signing and the shared cache ---------------------------------------------------------

  private async startSigner (opts: SignerOptions): Promise<void> {
    const log = this.log.child('signer')
    this.cache = await BinaryCache.open(opts.cacheDir, { log: log.child('cache'), ...(opts.compression !== undefined ? { compression: opts.compression } : {}) })
    this.signer = new Signer({
      cache: this.cache,
      cacheKey: opts.cacheKey,
      ...(this.options.trustedKeys !== undefined ? { trustedKeys: this.options.trustedKeys } : {}),
      selfKey: this.nodeKey.public,
      log
    })
    if (opts.cacheListen !== undefined) {
      this.cacheServer = await startCacheServer(this.cache, { ...opts.cacheListen, log: log.child('http') })
      log.info(`binary cache at ${this.cacheServer.url}, key ${this.signer.publicCacheKey()}`)
    }
    const signer = this.signer
    await serve(this.network, SIGN, async (from, offer) => {
      log.info(`${from} offers ${offer.paths.length} path(s)`)
      return await signer.handleOffer(from, offer, async (paths, consume) => { await pullNars(this.network, from, paths, consume) })
    })
  }

  /**
   * The keys a peer's paths must be signed with to enter this store: this node's own and those
   * of --trusted-keys when given; otherwise this node's own and the key the peer announces.
   */
  private peerTrust (peerId: string): PathTrust {
    const own = this.nodeKey.public
    if (this.options.trustedKeys !== undefined) return { keys: [own, ...this.options.trustedKeys], policy: '--trusted-keys and this node\'s own key' }
    const announced = this.peers.get(peerId)?.beacon.signingKey
    const keys = [own]
    if (announced !== undefined) {
      try {
        keys.push(parsePublicKey(announced))
      } catch {}
    }
    return { keys, policy: announced === undefined ? `this node's own key (${peerId} has announced none yet)` : `the key ${peerId} announces` }
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
        signer: { peerId: this.peerId, signer: self },
        reason: 'this node is the signer',
        ignored
      }
    }
    const configured = new Set(this.options.cachePublicKeys ?? [])
    let signer: CacheChoice['signer']
    for (const p of this.peers.list()) {
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
      this.log.warn(`ignoring the signer ${i.peerId}: it announces cache key ${i.cacheKey}, and ${i.reason}`)
    }
    const keys = [...configured].join(' ')
    if (this.options.cacheUrl !== undefined && keys !== '') {
      return { ref: { url: this.options.cacheUrl, publicKey: keys }, ...(signer !== undefined ? { signer } : {}), reason: '--cache-url', ignored }
    }
    const url = signer?.signer.cacheUrls[0]
    if (signer !== undefined) {
      return { ...(url !== undefined ? { ref: { url, publicKey: signer.signer.cacheKey } } : {}), signer, reason: 'its cache key is configured (--cache-public-key)', ignored }
    }
    return { reason: configured.size === 0 ? 'no --cache-public-key is configured' : 'no signer with a configured cache key is online', ignored }
  }

  /** The mesh's signer as this node's configuration admits it (see cacheChoice). */
  private signerPeer (): { peerId: string, signer: NonNullable<Beacon['signer']> } | undefined {
    return this.cacheChoice().signer
  }

  /** The shared cache as a substituter, when one is configured or a trusted signer serves one. */
  private cacheRef (): CacheRef | undefined {
    return this.cacheChoice().ref
  }

  /** Offers what this node built to the signer; with none online the outputs keep waiting. */
  private async offerToSigner (): Promise<void> {
    if (this.stopping || this.signQueue.pending() === 0) return
    const target = this.signerPeer()
    if (target === undefined) {
      this.log.debug(`no signer online; ${this.signQueue.pending()} output(s) wait`)
      return
    }
    const send = target.peerId === this.peerId && this.signer !== undefined
      ? async (offer: SignOffer): Promise<SignReply> => await (this.signer as Signer).handleOffer(this.peerId, offer, this.localNars())
      : async (offer: SignOffer): Promise<SignReply> => await call(this.network, target.peerId, SIGN, offer)
    try {
      await this.signQueue.drain(send)
    } catch (err) {
      this.log.warn(`offering outputs to the signer ${target.peerId} failed: ${(err as Error).message}`)
    }
  }

  /** NARs from this node's own store, for its own signer. */
  private localNars (): NarSource {
    return async (paths, consume) => {
      for (const p of paths) {
        const info = await this.store.queryPathInfo(p)
        if (info === null) throw new Error(`${p} is no longer valid here`)
        await consume(toMessage(info), this.store.exportNar(p))
      }
    }
  }

  // --- control API --------------------------------------------------------------------------

  async submit (drvPaths: string[], options: SubmitOptions): Promise<string> {
    const id = `${new Date().toISOString().replace(/[-:]/g, '').slice(0, 15)}-${randomUUID().slice(0, 8)}`
    const cache = this.cacheRef()
    let spec = await planSubmission(this.store, drvPaths, {
      id, now: Date.now(), ...options,
      ...(cache !== undefined ? { substitutable: async (paths: string[]) => await cachedPaths(cache, paths) } : {})
    })
    if (cache !== undefined) {
      // Outputs the shared cache has: substitute them now, through Nix, which checks the cache's signature.
      const wanted = spec.substituted.flatMap(j => Object.values(j.outputs))
      const valid = await this.store.isValid(wanted)
      const missing = wanted.filter(p => !valid.has(p))
      try {
        await substituteFrom(cache, missing)
        if (missing.length > 0) this.log.info(`substituted ${missing.length} output(s) from the shared cache`)
      } catch (err) {
        this.log.warn(`substituting from ${cache.url} failed, building instead: ${(err as Error).message}`)
        spec = await planSubmission(this.store, drvPaths, { id, now: Date.now(), ...options })
      }
    }
    this.log.info(`submission ${id}: ${drvPaths.length} requested, ${spec.jobs.length} to build, ${spec.substituted.length} already available`)
    this.dispatch({ type: 'submit', submission: spec })
    const s = this.scheduler.submission(id)
    // A submission with nothing to build has finished already and been recorded as such.
    if (s !== undefined && !this.records.has(id)) {
      this.records.set(id, s)
      this.db.putSubmission(s)
    }
    await this.db.flush()
    return id
  }

  submissionReport (id: string): SubmissionReport | undefined {
    const s = this.scheduler.submission(id)
    if (s === undefined) return undefined
    return buildReport(s, this.scheduler.submissionJobs(id), this.scheduler.isFinished(id))
  }

  /** Calls `listener` with the submission's report on every change until it finishes. */
  watch (id: string, listener: SubmissionListener): () => void {
    const set = this.listeners.get(id) ?? new Set()
    set.add(listener)
    this.listeners.set(id, set)
    return () => { set.delete(listener) }
  }

  status (): StatusReport {
    const now = Date.now()
    const self = this.beacon()
    return {
      self: {
        peerId: this.peerId,
        ...this.statusFields(self),
        addresses: this.network.addresses(),
        lastSeen: new Date(now).toISOString(),
        membership: this.options.meshSecret === OPEN_MESH_SECRET ? 'open' : 'closed'
      },
      peers: this.peers.list().map(p => ({
        peerId: p.peerId,
        ...this.statusFields(p.beacon),
        addresses: nonEmpty(this.network.peerAddresses(p.peerId)) ?? p.beacon.addresses,
        lastSeen: new Date(p.lastSeen).toISOString()
      })),
      submissions: this.scheduler.submissionIds().map(id => {
        const r = this.submissionReport(id)
        const awaiting = (r?.results ?? []).filter(x => x.check?.awaiting !== undefined).length
        return {
          id, state: r?.state ?? 'running', counts: r?.counts ?? {}, submittedAt: new Date(this.scheduler.submission(id)?.submittedAt ?? 0).toISOString(),
          ...(awaiting > 0 ? { awaitingSecondBuilder: awaiting } : {})
        }
      }),
      counters: { ...this.counters },
      penalties: this.network.penalties(),
      refusedStreams: this.network.refusedStreams(),
      signQueue: this.signQueue.pending(),
      ...this.signerStatus()
    }
  }

  private signerStatus (): { signer?: SignerStatus, cache: CacheStatus } {
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
    if (target.peerId === this.peerId && this.signer !== undefined) {
      status.trust = { policy: this.signer.trustPolicy(), keys: this.signer.trusted().map(k => formatPublicKey(k)) }
      status.rejections = this.signer.rejections()
    }
    return { signer: status, cache }
  }

  private statusFields (b: Beacon): Omit<NodeFields, 'peerId' | 'addresses' | 'lastSeen'> {
    return {
      systems: b.systems,
      features: b.features,
      mandatoryFeatures: b.mandatoryFeatures,
      maxJobs: b.maxJobs,
      running: b.running,
      queued: b.queued,
      speedFactor: b.speedFactor,
      load: b.load,
      freeDiskBytes: b.freeDiskBytes,
      diskLow: b.diskLow,
      building: b.building,
      ...(b.signingKey !== undefined ? { signingKey: b.signingKey } : {})
    }
  }

  // --- the loop -----------------------------------------------------------------------------

  private dispatch (event: SchedulerEvent): Decision[] {
    const decisions = this.scheduler.handle(event, Date.now())
    for (const d of decisions) this.execute(d)
    return decisions
  }

  private execute (d: Decision): void {
    switch (d.type) {
      case 'build': this.startBuild(d.item); break
      case 'abort': this.abortBuild(d.owner, d.drvPath, d.reason); break
      case 'steal': void this.steal(d.from, d.want); break
      case 'renew': void this.renew(d.owner, d.drvPaths); break
      case 'report': void this.report(d.owner, d.drvPath, d.outcome); break
      case 'import': void this.importOutputs(d.from, d.drvPath, d.outputs, d.narHashes); break
      case 'sign': this.signQueue.add(d.paths); break
      case 'discard': void this.discardOutputs(d.drvPath, d.paths); break
      case 'job-changed': this.jobChanged(d.job); break
      case 'submission-finished': this.submissionFinished(d.id, d.ok); break
      case 'grant': case 'renew-reply': break // answered by the protocol handler that asked
    }
    if (d.type === 'build' || d.type === 'job-changed' || d.type === 'submission-finished') this.announceSoon()
  }

  /** Publishes beacon and offer shortly after a change, once per burst of changes. */
  private announceSoon (): void {
    if (this.beaconDue) return
    this.beaconDue = true
    setTimeout(() => { if (this.beaconDue) void this.publishBeacon() }, ANNOUNCE_DELAY_MS).unref()
  }

  private onTick (): void {
    for (const gone of this.peers.expire(Date.now())) {
      this.log.info(`peer ${gone} went silent`)
      this.dispatch({ type: 'peer-lost', peerId: gone })
    }
    this.dispatch({ type: 'tick' })
  }

  private peerChanged (peerId: string): void {
    const view = this.peers.view(peerId)
    if (view !== undefined) this.dispatch({ type: 'peer-seen', peer: view })
  }

  private startBuild (item: WorkItem): void {
    const key = runKey(item.owner, item.drvPath)
    const controller = new AbortController()
    this.builds.set(key, controller)
    if (item.owner !== this.peerId) this.counters.stolen++
    void runWorkItem({
      selfId: this.peerId,
      store: this.store,
      network: this.network,
      log: this.log.child('build'),
      logDir: join(this.options.dataDir, 'logs'),
      systemFeatures: allFeatures(this.options.capabilities),
      cache: () => this.cacheRef(),
      trust: (peer: string) => this.peerTrust(peer)
    }, item, controller.signal).then(async (outcome) => {
      this.builds.delete(key)
      if (controller.signal.aborted) return
      if (outcome.ok) {
        this.counters.built++
        // A checked job's outputs reach the signer only once two builders agree (the owner queues them).
        if (item.check !== true) this.signQueue.add(Object.values(outcome.outputs))
        // On disk before the owner hears of it: a worker killed right after its report would
        // otherwise lose the output from its sign queue, and the cache would never get it.
        await this.db.flush()
      } else {
        this.counters.failed++
      }
      this.dispatch({ type: 'build-finished', owner: item.owner, drvPath: item.drvPath, outcome })
    })
  }

  private async steal (from: string, want: number): Promise<void> {
    const caps = this.options.capabilities
    try {
      const grant = await call(this.network, from, STEAL, {
        want: Math.min(want, 64), systems: [...caps.systems], features: [...caps.features], mandatoryFeatures: [...caps.mandatoryFeatures]
      })
      if (grant.items.length > 0) this.log.info(`stole ${grant.items.length} job(s) from ${from}`)
      this.dispatch({ type: 'steal-reply', from, items: grant.items.map(i => ({ ...i, owner: from })) })
    } catch (err) {
      this.log.debug(`steal from ${from} failed: ${(err as Error).message}`)
      this.dispatch({ type: 'steal-failed', from, error: (err as Error).message })
    }
  }

  private async renew (owner: string, drvPaths: string[]): Promise<void> {
    const requestedAt = Date.now()
    try {
      const reply = await call(this.network, owner, LEASE, { renew: drvPaths })
      const lost = new Set(reply.lost)
      const held = drvPaths.filter(p => !lost.has(p))
      if (held.length > 0) this.dispatch({ type: 'lease-renewed', owner, drvPaths: held, requestedAt })
      if (reply.lost.length > 0) {
        this.log.warn(`${owner} says ${reply.lost.length} lease(s) lapsed; aborting those builds`)
        this.dispatch({ type: 'lease-lost', owner, drvPaths: reply.lost })
      }
    } catch (err) {
      // The owner may be restarting; keep building and try again at the next renewal. The
      // scheduler aborts the build if no renewal is confirmed for a whole lease.
      this.log.debug(`renewing leases with ${owner} failed: ${(err as Error).message}`)
    }
  }

  /** Stops a build whose lease is gone: its nix-store and the builder's processes are killed. */
  private abortBuild (owner: string, drvPath: string, reason: string): void {
    const build = this.builds.get(runKey(owner, drvPath))
    if (build === undefined) return
    this.log.warn(`aborting the build of ${drvPath} for ${owner}: ${reason}`)
    build.abort(new Error(`lease lost: ${reason}`))
  }

  /** Tells the owner how a stolen job went, retrying while the owner is unreachable. */
  private async report (owner: string, drvPath: string, outcome: BuildOutcome): Promise<void> {
    const report: ResultReport = outcome.ok
      ? { drvPath, ok: true, outputs: outcome.outputs, ...(outcome.narHashes !== undefined ? { narHashes: outcome.narHashes } : {}) }
      : { drvPath, ok: false, failure: { ...outcome.failure, logTail: outcome.failure.logTail?.slice(-40).map(l => l.slice(0, 4000)) } }
    const deadline = Date.now() + REPORT_GIVE_UP_MS
    while (!this.stopping) {
      try {
        await call(this.network, owner, RESULT, report)
        return
      } catch (err) {
        if (Date.now() > deadline) {
          this.log.warn(`gave up reporting ${drvPath} to ${owner}: ${(err as Error).message}`)
          return
        }
        this.log.debug(`reporting ${drvPath} to ${owner} failed, retrying: ${(err as Error).message}`)
        await new Promise(resolve => setTimeout(resolve, REPORT_RETRY_MS))
      }
    }
  }

  private async importOutputs (from: string, drvPath: string, outputs: Record<string, string>, narHashes?: Record<string, string>): Promise<void> {
    try {
      // A checked job: what `from` serves must have the NAR hashes both builders agreed on.
      const expectNarHashes = narHashes === undefined ? undefined : Object.fromEntries(Object.entries(outputs).flatMap(([n, p]) => narHashes[n] !== undefined ? [[p, narHashes[n]]] : []))
      // Only what `from` (or a key of --trusted-keys) signed is imported; anything else and the
      // result is refused: nothing enters the store and the job is built again elsewhere.
      const r = await fetchClosure(this.network, this.store, from, Object.values(outputs), undefined, { trust: this.peerTrust(from), ...(expectNarHashes !== undefined ? { expectNarHashes } : {}) })
      this.log.info(`${drvPath} built by ${from}; fetched ${r.imported.length} path(s), ${r.bytes} bytes`)
      this.dispatch({ type: 'import-finished', from, drvPath })
    } catch (err) {
      const e = err as Error
      // An UntrustedPath names the path and why its signature was refused.
      this.log.warn(`fetching outputs of ${drvPath} from ${from} failed: ${e.message}`)
      this.dispatch({ type: 'import-finished', from, drvPath, error: e.message })
    }
  }

  /**
   * Removes from this store the outputs of a checked job built here whose other build differed,
   * so nothing of it is used or cached. A path something else references stays (Nix refuses).
   */
  private async discardOutputs (drvPath: string, paths: string[]): Promise<void> {
    const r = await exec('nix-store', ['--delete', ...paths]).catch((err: unknown) => ({ code: -1, stderr: (err as Error).message }))
    if (r.code === 0) this.log.warn(`${drvPath} is not deterministic: deleted its outputs built here (${paths.join(', ')})`)
    else this.log.warn(`${drvPath} is not deterministic; deleting its outputs built here failed: ${r.stderr.trim().split('\n').slice(-1)[0] ?? ''}`)
  }

  private jobChanged (job: Job): void {
    this.db.putJob(job)
    if (TERMINAL_STATES.has(job.state) && job.state !== 'substituted') {
      this.log.debug(`${job.drvPath}: ${job.state}`)
    }
    for (const id of job.submissions) this.notify(id)
  }

  private submissionFinished (id: string, ok: boolean): void {
    const s = this.scheduler.submission(id)
    const known = this.records.get(id)
    if (s !== undefined && known?.finished === undefined) {
      const record: SubmissionRecord = { ...s, finished: { ok, at: Date.now() } }
      this.records.set(id, record)
      this.db.putSubmission(record)
      this.log.info(`submission ${id} finished: ${ok ? 'all built' : 'some failed'}`)
    }
    this.notify(id)
  }

  private notify (id: string): void {
    const set = this.listeners.get(id)
    if (set === undefined || set.size === 0) return
    const report = this.submissionReport(id)
    if (report === undefined) return
    for (const l of set) l(report)
  }

  // --- gossip -------------------------------------------------------------------------------

  private beacon (): Beacon {
    const caps = this.options.capabilities
    const running = this.scheduler.runningItems()
    const signer = this.selfSigner()
    return {
      v: 1,
      seq: this.beaconSeq,
      systems: [...caps.systems],
      features: [...caps.features],
      mandatoryFeatures: [...caps.mandatoryFeatures],
      maxJobs: this.options.maxJobs,
      running: running.length,
      queued: this.scheduler.queuedCount(),
      speedFactor: this.options.speedFactor,
      load: Math.round((loadavg()[0] ?? 0) * 100) / 100,
      freeDiskBytes: this.freeDiskBytes,
      diskLow: this.diskLow,
      building: running.map(i => i.drvPath).slice(0, 64),
      addresses: this.network.addresses().slice(0, 32),
      signingKey: formatPublicKey(this.nodeKey.public),
      ...(signer !== undefined ? { signer } : {})
    }
  }

  /** This node's signer fields for its beacon, when it is the signer. */
  private selfSigner (): Beacon['signer'] {
    if (this.signer === undefined || this.cache === undefined) return undefined
    const { paths, narBytes, hits, misses } = this.cache.stats()
    return { cacheKey: this.signer.publicCacheKey(), cacheUrls: this.cacheUrls(), paths, narBytes, hits, misses }
  }

  /** URLs peers can reach the HTTP cache at: the listen host, or every address libp2p listens on. */
  private cacheUrls (): string[] {
    const server = this.cacheServer
    const listen = this.options.signer?.cacheListen
    if (server === undefined || listen === undefined) return []
    if (listen.host !== '0.0.0.0' && listen.host !== '::') return [server.url]
    const hosts = new Set<string>()
    for (const a of this.network.addresses()) {
      const m = /^\/ip4\/([0-9.]+)\//.exec(a)
      if (m?.[1] !== undefined && !m[1].startsWith('127.')) hosts.add(m[1])
    }
    return [...hosts].slice(0, 8).map(h => `http://${h}:${server.port}`)
  }

  private async publishBeacon (): Promise<void> {
    if (this.stopping) return
    this.beaconDue = false
    this.beaconSeq++
    await this.network.publish(TOPIC_BEACON, this.beacon())
    const entries = this.scheduler.offer()
    if (entries.length > 0 || !this.lastOfferEmpty) {
      this.offerSeq++
      await this.network.publish(TOPIC_OFFER, { v: 1, seq: this.offerSeq, entries })
    }
    this.lastOfferEmpty = entries.length === 0
  }

  private async checkDisk (): Promise<void> {
    try {
      const s = await statfs('/nix/store')
      this.freeDiskBytes = s.bavail * s.bsize
      const low = this.freeDiskBytes < this.options.minFreeDiskBytes
      if (low !== this.diskLow) this.log.warn(low ? `only ${this.freeDiskBytes} bytes free in /nix/store: taking no work` : 'enough disk again: taking work')
      this.diskLow = low
    } catch {
      this.freeDiskBytes = 0
    }
  }
}

function runKey (owner: string, drvPath: string): string {
  return `${owner}\n${drvPath}`
}

function allFeatures (caps: MachineCapabilities): string[] {
  return [...new Set([...caps.features, ...caps.mandatoryFeatures])]
}

function outcomeOf (report: ResultReport): BuildOutcome {
  if (report.ok) return { ok: true, outputs: report.outputs ?? {}, ...(report.narHashes !== undefined ? { narHashes: report.narHashes } : {}) }
  return { ok: false, failure: report.failure ?? { kind: 'transient', message: 'worker gave no reason' } }
}

function hashSeed (s: string): number {
  let h = 2166136261
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619)
  return h >>> 0
}

function nonEmpty<T> (xs: T[]): T[] | undefined {
  return xs.length > 0 ? xs : undefined
}
