// The status page's live feed, `GET /events` (server-sent events): a `snapshot` event at once,
// then a new one whenever the node's state changes (looked at twice a second, sent only when it
// differs), and `log` events with the lines the builds running here wrote since the last (a few
// times a second, the last LOG_TAIL_LINES at most: a build writing megabytes sends no more).
// The page (status-page.ts) renders these; nothing here is HTML.
//
// Bounded: at most SSE_MAX_CLIENTS streams (a few below the listener's per-address connection
// limit, so a browser can still load the page and Prometheus scrape), and a client that does
// not read is dropped once SSE_MAX_BUFFERED_BYTES wait for it, rather than buffered without end.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { LogFrame } from '../../protocols/mesh/messages.ts'
import type { FailureKind } from '../scheduler/job.ts'
import type { ResultState, SignerStatus, StatusReport, SubmissionReport, CacheStatus } from '../mesh/reports.ts'
import { reply, TEXT_TYPE } from '../http/bounded-server.ts'

/** Event streams held at once, over all clients. */
export const SSE_MAX_CLIENTS = 8
/** How often the state is looked at; a snapshot is sent at most this often. */
export const SSE_THROTTLE_MS = 500
/** How often new log lines are sent. */
export const SSE_LOG_FLUSH_MS = 250
/** Bytes queued for one client beyond which it is dropped (it stopped reading). */
export const SSE_MAX_BUFFERED_BYTES = 2 * 1024 * 1024
/** A comment line this often keeps idle streams inside the listener's idle timeout. */
export const SSE_HEARTBEAT_MS = 15_000
/** Lines kept and shown of each running build's log, and of each failure's. */
export const LOG_TAIL_LINES = 40
export const FAILURE_TAIL_LINES = 20
/** Characters shown of a log line (the rest is cut: the page is for a glance). */
export const PAGE_LINE_CHARS = 1000
/** Submissions shown (the newest), and failures shown over them. */
export const SUBMISSIONS_SHOWN = 20
export const FAILURES_SHOWN = 10

/** What the page reads from the node (mesh-node.ts). */
export interface StatusPageSource {
  status: () => StatusReport
  submissionReport: (id: string) => SubmissionReport | undefined
  /** Derivations building in this node's slots now. */
  runningHere: () => string[]
  /** The log of a build running here: its recent lines, then the new ones until it ends (build-logs.ts). */
  followLog: (drvPath: string, signal: AbortSignal) => AsyncIterable<LogFrame>
}

export interface PagePeer {
  peerId: string
  self: boolean
  systems: string[]
  maxJobs: number
  running: number
  queued: number
  load: number
  diskLow: boolean
  building: string[]
  lastSeen: string
}

/** The `snapshot` event's data. */
export interface PageSnapshot {
  at: string
  node: string
  membership: string
  peers: PagePeer[]
  running: Array<{ drvPath: string, lines: string[] }>
  submissions: Array<{ id: string, state: string, submittedAt: string, total: number, counts: Partial<Record<ResultState, number>> }>
  failures: Array<{ drvPath: string, submission: string, kind: FailureKind, message: string, logTail: string[] }>
  signer?: SignerStatus
  cache?: CacheStatus
  signQueue: number
  counters: StatusReport['counters']
}

/** The `log` event's data: lines a running build just wrote. */
export interface PageLogLines { drvPath: string, lines: string[] }

/** lines: the tail shown; pending: those of it not sent in a `log` event yet. */
interface Follower { lines: string[], pending: string[], abort: AbortController }

export class StatusEvents {
  private readonly source: StatusPageSource
  private readonly clients = new Set<ServerResponse>()
  private readonly followers = new Map<string, Follower>()
  private timer: ReturnType<typeof setInterval> | undefined
  private lastKey = ''
  private lastLook = 0
  private lastHeartbeat = 0
  private closed = false

  constructor (source: StatusPageSource) {
    this.source = source
  }

  get clientCount (): number { return this.clients.size }

  /** Answers GET /events: a stream, or 503 when SSE_MAX_CLIENTS are held already. */
  serve (req: IncomingMessage, res: ServerResponse): void {
    if (this.closed || this.clients.size >= SSE_MAX_CLIENTS) {
      res.setHeader('Retry-After', '10')
      reply(res, req, 503, TEXT_TYPE, `at most ${SSE_MAX_CLIENTS} event streams at once\n`)
      return
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' })
    if (req.method === 'HEAD') { res.end(); return }
    // Sent to the others first: the snapshot below holds those lines already.
    this.flushLogs()
    this.clients.add(res)
    res.once('close', () => {
      this.clients.delete(res)
      if (this.clients.size === 0) this.idle()
    })
    // The browser reconnects by itself after a drop: not too eagerly.
    this.write(res, 'retry: 3000\n\n')
    this.syncFollowers()
    // lastKey stays what the other clients were sent last: a change is still theirs to get.
    this.write(res, event('snapshot', this.snapshot()))
    if (this.timer === undefined) {
      this.timer = setInterval(() => { this.tick() }, SSE_LOG_FLUSH_MS)
      this.timer.unref()
    }
  }

  close (): void {
    this.closed = true
    for (const res of this.clients) res.destroy()
    this.clients.clear()
    this.idle()
  }

  /** What the page shows, from the node's status and its submissions' reports. */
  snapshot (): PageSnapshot {
    const st = this.source.status()
    const peer = (n: StatusReport['peers'][number], self: boolean): PagePeer => ({
      peerId: n.peerId, self, systems: n.systems, maxJobs: n.maxJobs, running: n.running, queued: n.queued,
      load: n.load, diskLow: n.diskLow, building: n.building, lastSeen: n.lastSeen
    })
    const submissions = [...st.submissions].sort((a, b) => b.submittedAt.localeCompare(a.submittedAt)).slice(0, SUBMISSIONS_SHOWN)
    const failures: PageSnapshot['failures'] = []
    for (const s of submissions) {
      for (const r of this.source.submissionReport(s.id)?.results ?? []) {
        if (failures.length >= FAILURES_SHOWN) break
        if (r.state !== 'failed' || r.failure === undefined) continue
        failures.push({ drvPath: r.drvPath, submission: s.id, kind: r.failure.kind, message: cut(r.failure.message), logTail: (r.failure.logTail ?? []).slice(-FAILURE_TAIL_LINES).map(cut) })
      }
    }
    return {
      at: new Date().toISOString(),
      node: st.self.peerId,
      membership: st.self.membership,
      peers: [peer(st.self, true), ...st.peers.map(p => peer(p, false))],
      running: this.source.runningHere().map(drvPath => ({ drvPath, lines: this.followers.get(drvPath)?.lines ?? [] })),
      submissions: submissions.map(s => ({
        id: s.id, state: s.state, submittedAt: s.submittedAt, counts: s.counts,
        total: Object.values(s.counts).reduce((n, c) => n + (c ?? 0), 0)
      })),
      failures,
      ...(st.signer !== undefined ? { signer: st.signer } : {}),
      ...(st.cache !== undefined ? { cache: st.cache } : {}),
      signQueue: st.signQueue,
      counters: st.counters
    }
  }

  private tick (): void {
    if (this.clients.size === 0) return
    this.flushLogs()
    if (Date.now() - this.lastLook < SSE_THROTTLE_MS - SSE_LOG_FLUSH_MS / 2) return
    this.lastLook = Date.now()
    this.syncFollowers()
    const snapshot = this.snapshot()
    const key = keyOf(snapshot)
    if (key !== this.lastKey) {
      this.lastKey = key
      this.broadcast(event('snapshot', snapshot))
    } else if (Date.now() - this.lastHeartbeat >= SSE_HEARTBEAT_MS) {
      this.lastHeartbeat = Date.now()
      this.broadcast(': keep-alive\n\n')
    }
  }

  /** Follows the log of every build running here, and stops following those that ended. */
  private syncFollowers (): void {
    const running = new Set(this.source.runningHere())
    for (const [drvPath, f] of this.followers) {
      if (!running.has(drvPath)) { f.abort.abort(); this.followers.delete(drvPath) }
    }
    for (const drvPath of running) {
      if (this.followers.has(drvPath)) continue
      const f: Follower = { lines: [], pending: [], abort: new AbortController() }
      this.followers.set(drvPath, f)
      void this.follow(drvPath, f)
    }
  }

  private async follow (drvPath: string, f: Follower): Promise<void> {
    try {
      for await (const frame of this.source.followLog(drvPath, f.abort.signal)) {
        if (f.abort.signal.aborted) return
        if (frame.type !== 'lines' || frame.lines.length === 0) continue
        const lines = frame.lines.slice(-LOG_TAIL_LINES).map(cut)
        for (const kept of [f.lines, f.pending]) {
          kept.push(...lines)
          if (kept.length > LOG_TAIL_LINES) kept.splice(0, kept.length - LOG_TAIL_LINES)
        }
      }
    } catch {
      // The file went away or could not be read: the page keeps what it showed. The follower
      // stays (is not restarted) while the build runs, so no line is sent twice.
    }
  }

  private flushLogs (): void {
    for (const [drvPath, f] of this.followers) {
      if (f.pending.length === 0) continue
      this.broadcast(event('log', { drvPath, lines: f.pending } satisfies PageLogLines))
      f.pending = []
    }
  }

  private broadcast (text: string): void {
    for (const res of this.clients) this.write(res, text)
  }

  /** Drops a client whose earlier events still wait (one big event alone does not). */
  private write (res: ServerResponse, text: string): void {
    if (res.destroyed) return
    if (res.writableLength > SSE_MAX_BUFFERED_BYTES) { res.destroy(); return }
    res.write(text)
  }

  /** No client left: stop looking and following until one comes. */
  private idle (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
    for (const f of this.followers.values()) f.abort.abort()
    this.followers.clear()
    this.lastKey = ''
  }
}

function cut (line: string): string {
  return line.length > PAGE_LINE_CHARS ? `${line.slice(0, PAGE_LINE_CHARS)}…` : line
}

function event (name: string, data: unknown): string {
  // JSON has no raw newline: one data line per event.
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`
}

/** What counts as a change: everything but the time and the log lines (sent as `log` events). */
function keyOf (s: PageSnapshot): string {
  return JSON.stringify({ ...s, at: undefined, running: s.running.map(r => r.drvPath) })
}
