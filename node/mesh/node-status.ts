// The `status` report: this node, its peers as their beacons describe them, submissions,
// counters, penalties, the sign queue, the build history, and the signer and cache.
import { OPEN_MESH_SECRET } from '../../protocols/mesh/constants.ts'
import type { Beacon } from '../../protocols/mesh/messages.ts'
import type { Scheduler } from '../scheduler/scheduler.ts'
import type { BuildCounters } from './effects.ts'
import type { MeshNetwork } from './network.ts'
import type { PeerTable } from './peer-table.ts'
import type { BuilderStatus, CacheStatus, NodeFields, SignerStatus, StatusReport, SubmissionReport } from './reports.ts'

export interface StatusSources {
  network: MeshNetwork
  peers: PeerTable
  scheduler: Pick<Scheduler, 'submissionIds' | 'submission'>
  meshSecret: string
  beacon: () => Beacon
  submissionReport: (id: string) => SubmissionReport | undefined
  counters: BuildCounters
  signQueuePending: () => number
  buildHistory?: () => NonNullable<StatusReport['buildHistory']>
  signer: () => { signer?: SignerStatus, cache: CacheStatus }
  /** The HTTP listener's base URL, when the node has one. */
  httpUrl?: string
  builder?: () => BuilderStatus
}

export function nodeStatus (src: StatusSources): StatusReport {
  const { network, scheduler } = src
  const now = Date.now()
  const self = src.beacon()
  return {
    self: {
      peerId: network.peerId,
      ...statusFields(self),
      addresses: network.addresses(),
      lastSeen: new Date(now).toISOString(),
      membership: src.meshSecret === OPEN_MESH_SECRET ? 'open' : 'closed'
    },
    peers: src.peers.list().map(p => ({
      peerId: p.peerId,
      ...statusFields(p.beacon),
      addresses: nonEmpty(network.peerAddresses(p.peerId)) ?? p.beacon.addresses,
      lastSeen: new Date(p.lastSeen).toISOString()
    })),
    submissions: scheduler.submissionIds().map(id => {
      const r = src.submissionReport(id)
      const awaiting = (r?.results ?? []).filter(x => x.check?.awaiting !== undefined).length
      return {
        id, state: r?.state ?? 'running', counts: r?.counts ?? {}, submittedAt: new Date(scheduler.submission(id)?.submittedAt ?? 0).toISOString(),
        ...(awaiting > 0 ? { awaitingSecondBuilder: awaiting } : {})
      }
    }),
    counters: { ...src.counters },
    penalties: network.penalties(),
    refusedStreams: network.refusedStreams(),
    signQueue: src.signQueuePending(),
    ...(src.buildHistory !== undefined ? { buildHistory: src.buildHistory() } : {}),
    ...src.signer(),
    ...(src.httpUrl !== undefined ? { http: { url: src.httpUrl, metrics: `${src.httpUrl}/metrics` } } : {}),
    ...(src.builder !== undefined ? { builder: src.builder() } : {})
  }
}

function statusFields (b: Beacon): Omit<NodeFields, 'peerId' | 'addresses' | 'lastSeen'> {
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

function nonEmpty<T> (xs: T[]): T[] | undefined {
  return xs.length > 0 ? xs : undefined
}
