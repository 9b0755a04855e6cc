// The composition root of a running node: it builds the services around the pure scheduler,
// starts them in order and stops them in reverse. What each does is in its own file.
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { PEER_EXPIRY_MS, TOPIC_BEACON, TOPIC_OFFER } from '../../protocols/mesh/constants.ts'
import { formatPublicKey } from '../../protocols/nix/signing-key.ts'
import { BuilderService } from '../builder/builder-service.ts'
import type { CacheRef } from '../cache/cache-client.ts'
import { openLocalStore } from '../nix/local-store.ts'
import { startHttpListener, type HttpListener } from '../observe/http-listener.ts'
import { NodeMetrics } from '../observe/metrics.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { Scheduler } from '../scheduler/scheduler.ts'
import { loadOrCreateNodeKey } from '../signer/node-key.ts'
import { SignQueue } from '../signer/sign-queue.ts'
import { BuildHistory } from '../state/build-history.ts'
import { StateDb } from '../state/state-db.ts'
import { Announcer } from './announcer.ts'
import { BuildLogs, type SourcedFrame } from './build-logs.ts'
import { BuildTimes } from './build-times.ts'
import { DispatchLoop } from './dispatch-loop.ts'
import { traceDecisions } from './job-trace.ts'
import { Effects, type BuildCounters } from './effects.ts'
import { loadOrCreateIdentity } from './identity.ts'
import { MeshNetwork } from './network.ts'
import { allFeatures, type CacheChoice, type NodeOptions, type SubmitOptions } from './node-options.ts'
import { nodeStatus } from './node-status.ts'
import { PeerTable } from './peer-table.ts'
import { peerTrust } from './peer-trust.ts'
import { serveLease } from './protocols/lease.ts'
import { serveLog } from './protocols/log.ts'
import { serveResult } from './protocols/result.ts'
import { serveSteal } from './protocols/steal.ts'
import type { StatusReport, SubmissionReport } from './reports.ts'
import type { Unserve } from './rpc.ts'
import { SignerLink } from './signer-link.ts'
import { serveStore } from './store-transfer.ts'
import { Submissions, type SubmissionListener } from './submissions.ts'

export type { CacheChoice, NodeOptions, SignerOptions, SubmitOptions } from './node-options.ts'

export class MeshNode {
  readonly options: NodeOptions
  readonly network: MeshNetwork
  readonly store: StoreBackend
  private readonly db: StateDb
  private readonly buildHistory: BuildHistory
  private readonly peers = new PeerTable(PEER_EXPIRY_MS)
  private loop!: DispatchLoop
  private announcer!: Announcer
  private signerLink!: SignerLink
  private effects!: Effects
  private submissions!: Submissions
  private signQueue!: SignQueue
  private buildLogs!: BuildLogs
  private httpListener: HttpListener | undefined
  private builder: BuilderService | undefined
  private unserve: Unserve[] = []
  private stopping = false
  /** Set when the node opened its store itself (and so closes it). */
  private readonly closeStore: () => void

  private constructor (options: NodeOptions, network: MeshNetwork) {
    this.options = options
    this.network = network
    if (options.store != null) {
      this.store = options.store
      this.closeStore = () => {}
    } else {
      const store = openLocalStore({ settings: { systemFeatures: allFeatures(options.capabilities) } })
      this.store = store
      this.closeStore = () => { store.close() }
    }
    this.db = new StateDb(join(options.dataDir, 'state'))
    this.buildHistory = new BuildHistory(this.db)
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
    await node.startServices()
    return node
  }

  get peerId (): string { return this.network.peerId }
  // Read by test/integration/trust.test.ts (a job's attempts).
  private get scheduler (): Scheduler { return this.loop.scheduler }
  /** Builds this node ran, by outcome, since it started (for status and tests). */
  get counters (): BuildCounters { return this.effects.counters }
  /** `http://host:port` of the HTTP listener (join --http-listen), when it has one. */
  get httpUrl (): string | undefined { return this.httpListener?.url }

  private async startServices (): Promise<void> {
    const { options: o, network, store, db, peers } = this
    const log = o.log
    await db.open()
    const history = this.buildHistory
    await history.load()
    await network.start()
    const nodeKey = await loadOrCreateNodeKey(o.dataDir, network.peerId)
    const signQueue = this.signQueue = new SignQueue(db, store, nodeKey, log.child('sign'))
    await signQueue.load()
    const signerLink = this.signerLink = new SignerLink({ network, store, peers, signQueue, selfKey: nodeKey.public, options: o, log })
    await signerLink.start()
    const loop = this.loop = new DispatchLoop({ options: o, network, peers, log })
    const scheduler = loop.scheduler
    const dispatch = loop.dispatch.bind(loop)
    const cacheRef = (): CacheRef | undefined => signerLink.cacheRef()
    // Build times of accepted results, by name, for the estimates of later submissions.
    const buildTimes = new BuildTimes({
      history, selfId: network.peerId, selfSpeedFactor: o.speedFactor,
      speedFactor: (peer) => peers.get(peer)?.beacon.speedFactor,
      job: (drvPath) => scheduler.job(drvPath)
    })
    const trust = { own: nodeKey.public, peers, ...(o.trustedKeys !== undefined ? { trustedKeys: o.trustedKeys } : {}) }
    const builder = this.builder = o.serveBuilder === true
      ? new BuilderService({
        dataDir: o.dataDir,
        store,
        log: log.child('builder'),
        peers: () => peers.list().map(p => ({ systems: p.beacon.systems, features: allFeatures(p.beacon), maxJobs: p.beacon.diskLow ? 0 : p.beacon.maxJobs })),
        submit: async (drvPaths, options) => await this.submissions.submit(drvPaths, options),
        report: (id) => this.submissions.report(id),
        watch: (id, listener) => this.submissions.watch(id, listener),
        watchLogs: async (id, onLines, stop, cancel) => { await this.buildLogs.watchSubmission(id, onLines, stop, cancel) }
      })
      : undefined
    this.effects = new Effects({
      network, store, signQueue, options: o, dispatch, log, cacheRef,
      stolenItems: () => scheduler.stolenItems(),
      flush: async () => { await db.flush() },
      trust: (peer) => peerTrust(trust, peer),
      builtHere: buildTimes.builtHere,
      ...(builder !== undefined ? { builderRoot: builder.root } : {}),
      ...(o.trace !== undefined ? { trace: o.trace } : {})
    })
    this.submissions = new Submissions({ store, scheduler, db, dispatch, cacheRef, log, estimate: (drvPath) => history.estimate(drvPath) })
    this.announcer = new Announcer({
      network, scheduler, options: o, log,
      signingKey: formatPublicKey(nodeKey.public),
      selfSigner: () => signerLink.selfSigner(),
      onDisk: (low) => { dispatch({ type: 'disk', low }) }
    })
    const buildLogs = this.buildLogs = new BuildLogs({
      selfId: network.peerId,
      logDir: join(o.dataDir, 'logs'),
      network,
      log: log.child('logs'),
      runningHere: (drvPath) => scheduler.runningItems().some(i => i.drvPath === drvPath),
      job: (drvPath) => scheduler.job(drvPath),
      submissionJobs: (id) => scheduler.submissionJobs(id),
      allJobs: () => scheduler.submissionIds().flatMap(id => scheduler.submissionJobs(id)),
      peersBuilding: (drvPath) => peers.list().filter(p => p.beacon.building.includes(drvPath)).map(p => p.peerId),
      peers: () => peers.list().map(p => p.peerId),
      deriver: async (path) => (await store.queryPathInfos([path])).get(path)?.deriver
    })
    for (const s of [this.effects, this.submissions, this.announcer, buildLogs, buildTimes]) loop.subscribe(s.onDecision)
    const metrics = new NodeMetrics({
      slots: () => ({ total: o.maxJobs, busy: scheduler.runningItems().length }),
      jobStates: () => scheduler.jobStateCounts(),
      peers: () => peers.list().length,
      localBuilds: () => this.counters,
      ...(o.signer !== undefined ? { signer: () => signerLink.figures() } : {})
    })
    loop.subscribe(metrics.onDecision)
    network.on('beacon', () => { metrics.gossipReceived(TOPIC_BEACON) })
    network.on('offer', () => { metrics.gossipReceived(TOPIC_OFFER) })
    network.on('nar-bytes', (direction, _peer, bytes) => { metrics.narBytesStreamed(direction, bytes) })
    if (o.trace !== undefined) {
      o.trace.start(network.peerId)
      loop.subscribe(traceDecisions(o.trace, network.peerId))
    }

    await this.announcer.checkDisk()
    await this.submissions.start()
    await buildLogs.start()
    dispatch({ type: 'disk', low: this.announcer.diskLow })
    loop.start()
    this.unserve.push(
      await serveSteal(network, { dispatch, leaseMs: () => scheduler.config.leaseMs, log }),
      await serveLease(network, { dispatch, log }),
      await serveResult(network, { dispatch, knows: (drvPath) => scheduler.job(drvPath) !== undefined, buildTime: buildTimes.reported }),
      await serveStore(network, store, log.child('store'), nodeKey.secret),
      await serveLog(network, buildLogs.local, log.child('logs'))
    )
    signerLink.startOffering()
    this.announcer.start()
    await builder?.start()
    if (o.httpListen !== undefined) {
      this.httpListener = await startHttpListener(metrics, { ...o.httpListen, log: log.child('http') }, {
        status: () => this.status(),
        submissionReport: (id) => this.submissions.report(id),
        runningHere: () => scheduler.runningItems().map(i => i.drvPath),
        followLog: (drvPath, signal) => buildLogs.local({ drvPath, follow: true }, signal)
      })
      log.info(`status page on ${this.httpListener.url}/, metrics on ${this.httpListener.url}/metrics`)
    }
  }

  /** Stops: gives stolen jobs back to their owners, aborts builds, closes everything. */
  async stop (): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    // First, so plain Nix stops sending builds (the machines file is emptied) while the mesh still answers.
    await this.builder?.stop()
    this.loop.stop()
    this.announcer.stop()
    this.buildLogs.stop()
    await this.httpListener?.close()
    await this.signerLink.stop()
    await this.effects.stop()
    await Promise.allSettled(this.unserve.map(async u => { await u() }))
    await this.db.flush()
    await this.network.stop()
    await this.signerLink.close()
    await this.db.close()
    this.closeStore()
    this.options.trace?.close()
  }

  /** The shared cache and signer this node's configuration admits (signer-link.ts). */
  cacheChoice (): CacheChoice { return this.signerLink.cacheChoice() }

  async submit (drvPaths: string[], options: SubmitOptions): Promise<string> { return await this.submissions.submit(drvPaths, options) }

  submissionReport (id: string): SubmissionReport | undefined { return this.submissions.report(id) }

  /** Calls `listener` with the submission's report on every change until it finishes. */
  watch (id: string, listener: SubmissionListener): () => void { return this.submissions.watch(id, listener) }

  /** The derivation a .drv or output path names, if this node's jobs or store know it. */
  async derivationOf (path: string): Promise<string | undefined> { return await this.buildLogs.derivationOf(path) }

  /** The build log of `drvPath` from this node or the peer that has it (build-logs.ts). */
  readLog (drvPath: string, follow: boolean, signal: AbortSignal): AsyncIterable<SourcedFrame> { return this.buildLogs.read(drvPath, follow, signal) }

  /** For submit -L: the log lines of the submission's builds until `stop` (then to their ends) or `cancel`. */
  async watchLogs (id: string, onLines: (drvPath: string, lines: string[]) => void, stop: AbortSignal, cancel: AbortSignal): Promise<void> {
    await this.buildLogs.watchSubmission(id, onLines, stop, cancel)
  }

  status (): StatusReport {
    const builder = this.builder
    return nodeStatus({
      network: this.network,
      peers: this.peers,
      scheduler: this.scheduler,
      meshSecret: this.options.meshSecret,
      beacon: () => this.announcer.beacon(),
      submissionReport: (id) => this.submissions.report(id),
      counters: this.counters,
      signQueuePending: () => this.signQueue.pending(),
      buildHistory: () => ({ names: this.buildHistory.names, entries: this.buildHistory.size, maxEntries: this.buildHistory.maxEntries }),
      signer: () => this.signerLink.status(),
      ...(this.httpUrl !== undefined ? { httpUrl: this.httpUrl } : {}),
      ...(builder !== undefined ? { builder: () => builder.status() } : {})
    })
  }
}
