// A node's Prometheus metrics (served at /metrics by http-listener.ts). Each node has a registry
// of its own, not prom-client's global one, so several nodes in one process (tests) keep apart.
//
// Two kinds of source, chosen to couple as little as possible: gauges (slots, queue, peers, the
// cache) read the node's state when scraped; counters count what the node is told as it happens
// (the scheduler's decisions, gossip, NAR bytes streamed). Counters start at 0 when the node
// starts; Prometheus' rate() and increase() take restarts in their stride.
import { Counter, Gauge, Registry } from 'prom-client'
import { TERMINAL_STATES, type JobState } from '../scheduler/job.ts'
import type { Decision } from '../scheduler/scheduler.ts'

/** Every job state, so each appears in the queue gauge, at 0 when no job is in it. */
const JOB_STATES = Object.keys({
  waiting: true, ready: true, leased: true, importing: true, built: true, substituted: true, failed: true, 'dependency-failed': true
} satisfies Record<JobState, true>) as JobState[]

export type NarDirection = 'sent' | 'received'

/** The signer's cache as the metrics show it (signer-link.ts). */
export interface SignerFigures {
  paths: number
  narBytes: number
  hits: number
  misses: number
  /** Worker outputs refused since the node started. */
  refused: number
}

/** What the gauges read at scrape time. */
export interface MetricSources {
  slots: () => { total: number, busy: number }
  jobStates: () => Map<JobState, number>
  peers: () => number
  /** Builds this node ran in its slots since it started (effects.ts). */
  localBuilds: () => { built: number, failed: number }
  /** Present on the signer only: the cache metrics exist there alone. */
  signer?: () => SignerFigures | undefined
}

interface Known { state: JobState, attempts: number }

export class NodeMetrics {
  readonly registry = new Registry()
  private readonly jobsBuilt: Counter
  private readonly jobsFailed: Counter
  private readonly jobsRetried: Counter
  private readonly stealsAsked: Counter
  private readonly stealsGranted: Counter
  private readonly stealsRefused: Counter
  private readonly narBytes: Counter<'direction'>
  private readonly gossip: Counter<'topic'>
  /** This node's unfinished jobs as last seen, to count transitions once (finished ones leave). */
  private readonly known = new Map<string, Known>()

  constructor (sources: MetricSources) {
    const registers = [this.registry]
    new Gauge({ name: 'meshbuild_slots', help: 'Build slots of this node (--max-jobs)', registers, collect () { this.set(sources.slots().total) } })
    new Gauge({ name: 'meshbuild_slots_busy', help: 'Slots running a build now (own jobs and stolen ones)', registers, collect () { this.set(sources.slots().busy) } })
    new Gauge({
      name: 'meshbuild_queue_jobs',
      help: 'Jobs of this node\'s submissions by state (ready: in the deque, to build or be stolen)',
      labelNames: ['state'],
      registers,
      collect () {
        const counts = sources.jobStates()
        for (const state of JOB_STATES) this.set({ state }, counts.get(state) ?? 0)
      }
    })
    new Gauge({ name: 'meshbuild_peers', help: 'Peers whose beacon was heard lately (not yet expired)', registers, collect () { this.set(sources.peers()) } })
    new Counter({
      name: 'meshbuild_local_builds_total',
      help: 'Builds run in this node\'s slots, of its own jobs or stolen ones, by outcome',
      labelNames: ['outcome'],
      registers,
      collect () {
        const b = sources.localBuilds()
        this.reset()
        this.inc({ outcome: 'built' }, b.built)
        this.inc({ outcome: 'failed' }, b.failed)
      }
    })
    this.jobsBuilt = new Counter({ name: 'meshbuild_jobs_built_total', help: 'Jobs of this node\'s submissions built, here or by a peer', registers })
    this.jobsFailed = new Counter({ name: 'meshbuild_jobs_failed_total', help: 'Jobs of this node\'s submissions that failed for good (after their retries)', registers })
    this.jobsRetried = new Counter({ name: 'meshbuild_jobs_retried_total', help: 'Failed attempts of this node\'s jobs put back in the deque to try again', registers })
    this.stealsAsked = new Counter({ name: 'meshbuild_steals_asked_total', help: 'Steal requests this node sent to peers', registers })
    this.stealsGranted = new Counter({ name: 'meshbuild_steals_granted_total', help: 'Steal requests from peers answered with at least one job', registers })
    this.stealsRefused = new Counter({ name: 'meshbuild_steals_refused_total', help: 'Steal requests from peers answered with no job', registers })
    this.narBytes = new Counter({ name: 'meshbuild_nar_bytes_total', help: 'Bytes of NARs streamed to or from peers', labelNames: ['direction'], registers })
    this.gossip = new Counter({ name: 'meshbuild_gossip_messages_received_total', help: 'Valid gossip messages received, by topic', labelNames: ['topic'], registers })
    // Both directions exist from the start, so rate() has a series before the first NAR.
    for (const direction of ['sent', 'received'] satisfies NarDirection[]) this.narBytes.inc({ direction }, 0)

    const signer = sources.signer
    if (signer !== undefined) {
      const figure = (name: string, help: string, pick: (s: SignerFigures) => number, kind: 'gauge' | 'counter'): void => {
        const collect = function (this: Gauge | Counter): void {
          const s = signer()
          this.reset()
          if (s !== undefined) this.inc(pick(s))
        }
        if (kind === 'gauge') new Gauge({ name, help, registers, collect })
        else new Counter({ name, help, registers, collect })
      }
      figure('meshbuild_cache_paths', 'Store paths in the signer\'s binary cache', s => s.paths, 'gauge')
      figure('meshbuild_cache_nar_bytes', 'Uncompressed NAR bytes in the signer\'s binary cache', s => s.narBytes, 'gauge')
      figure('meshbuild_cache_hits_total', 'narinfo lookups the cache answered with a path', s => s.hits, 'counter')
      figure('meshbuild_cache_misses_total', 'narinfo lookups for a path the cache lacks', s => s.misses, 'counter')
      figure('meshbuild_signer_refused_total', 'Worker outputs the signer refused (untrusted, missing references, bad NAR)', s => s.refused, 'counter')
    }
  }

  /** A decision subscriber (dispatch-loop.ts): counts jobs finishing and steals. */
  readonly onDecision = (d: Decision): void => {
    switch (d.type) {
      case 'steal': this.stealsAsked.inc(); break
      case 'grant': (d.items.length > 0 ? this.stealsGranted : this.stealsRefused).inc(); break
      case 'job-changed': this.jobChanged(d.job.drvPath, d.job.state, d.job.attempts); break
      default: break
    }
  }

  gossipReceived (topic: string): void {
    this.gossip.inc({ topic })
  }

  narBytesStreamed (direction: NarDirection, bytes: number): void {
    this.narBytes.inc({ direction }, bytes)
  }

  /** The text format Prometheus scrapes, and its content type. */
  async scrape (): Promise<{ contentType: string, text: string }> {
    return { contentType: this.registry.contentType, text: await this.registry.metrics() }
  }

  /**
   * A job is counted when it reaches built or failed from a state seen before: a job already
   * finished when first seen (restored, or shared with a new submission) was counted already.
   */
  private jobChanged (drvPath: string, state: JobState, attempts: number): void {
    const before = this.known.get(drvPath)
    if (before !== undefined && state !== 'failed' && attempts > before.attempts) this.jobsRetried.inc(attempts - before.attempts)
    if (before !== undefined && before.state !== state) {
      if (state === 'built') this.jobsBuilt.inc()
      else if (state === 'failed') this.jobsFailed.inc()
    }
    if (TERMINAL_STATES.has(state)) this.known.delete(drvPath)
    else this.known.set(drvPath, { state, attempts })
  }
}
