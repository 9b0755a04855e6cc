// Build logs: this node's own files under <data-dir>/logs (builder.ts writes them line by line),
// read or followed as they grow; the logs of builds other peers ran, found through the jobs this
// node owns and the peers' beacons and fetched over the log protocol; and the files' pruning.
import { open, readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  LOG_BACKLOG_BYTES, LOG_LINE_CHARS, LOG_MAX_BYTES_PER_REQUEST, LOG_MESSAGE_BYTES, LOG_MESSAGE_LINES, LOG_POLL_MS
} from '../../protocols/mesh/constants.ts'
import type { LogFrame, LogOutcome, LogRequest } from '../../protocols/mesh/messages.ts'
import type { Job } from '../scheduler/job.ts'
import type { Decision } from '../scheduler/scheduler.ts'
import type { Logger } from '../log.ts'
import { buildLogPath } from './builder.ts'
import type { MeshNetwork } from './network.ts'
import { requestLog } from './protocols/log.ts'

/** Logs older than this are deleted (docs/operations.md). */
export const LOG_MAX_AGE_MS = 7 * 24 * 3600_000
/** Above this total the oldest logs are deleted until under it. */
export const LOG_MAX_TOTAL_BYTES = 1024 * 1024 * 1024
export const LOG_PRUNE_INTERVAL_MS = 3600_000
/** Peers asked in turn for a log nobody is known to have. */
const MAX_PEERS_ASKED = 16
/** How often a watched submission's jobs are looked at for builds to follow (submit -L). */
const WATCH_POLL_MS = 300
const READ_CHUNK = 64 * 1024
/** Outcomes of builds this node ran for other owners, remembered for late readers. */
const MAX_OUTCOMES_KEPT = 10_000

export interface BuildLogsPorts {
  selfId: string
  logDir: string
  network: MeshNetwork
  log: Logger
  /** Whether this node is building the derivation now. */
  runningHere: (drvPath: string) => boolean
  /** The job of that derivation, when this node owns one. */
  job: (drvPath: string) => Job | undefined
  submissionJobs: (id: string) => Job[]
  allJobs: () => Iterable<Job>
  /** Peers whose latest beacon says they build the derivation now. */
  peersBuilding: (drvPath: string) => string[]
  peers: () => string[]
  /** The deriver the local store records for a path. */
  deriver: (path: string) => Promise<string | undefined>
}

/** A frame with the peer it came from (undefined: this node). */
export type SourcedFrame = LogFrame & { from?: string }

export class BuildLogs {
  private readonly ports: BuildLogsPorts
  private readonly outcomes = new Map<string, LogOutcome>()
  private pruneTimer: ReturnType<typeof setInterval> | undefined

  constructor (ports: BuildLogsPorts) {
    this.ports = ports
  }

  /** Records how builds ended; subscribe to the dispatch loop. */
  readonly onDecision = (d: Decision): void => {
    if (d.type === 'report') this.remember(d.drvPath, d.outcome.ok ? 'built' : 'failed')
    else if (d.type === 'job-changed' && (d.job.state === 'built' || d.job.state === 'failed')) this.remember(d.job.drvPath, d.job.state)
  }

  /** Prunes now and every hour. */
  async start (): Promise<void> {
    await this.prune()
    this.pruneTimer = setInterval(() => { void this.prune() }, LOG_PRUNE_INTERVAL_MS)
    this.pruneTimer.unref()
  }

  stop (): void {
    if (this.pruneTimer !== undefined) clearInterval(this.pruneTimer)
  }

  async prune (now = Date.now()): Promise<number> {
    try {
      const removed = await pruneLogDir(this.ports.logDir, { maxAgeMs: LOG_MAX_AGE_MS, maxTotalBytes: LOG_MAX_TOTAL_BYTES, now, keep: (name) => this.isRunningFile(name) })
      if (removed > 0) this.ports.log.info(`pruned ${removed} old build log(s)`)
      return removed
    } catch (err) {
      this.ports.log.warn(`pruning build logs failed: ${(err as Error).message}`)
      return 0
    }
  }

  /** How a build ended as this node knows it. */
  outcome (drvPath: string): LogOutcome {
    if (this.ports.runningHere(drvPath)) return 'unknown'
    const job = this.ports.job(drvPath)
    if (job?.state === 'built' || job?.state === 'failed') return job.state
    return this.outcomes.get(drvPath) ?? 'unknown'
  }

  /** The frames of a log this node holds (the log protocol's source). */
  readonly local = (req: LogRequest, signal: AbortSignal): AsyncIterable<LogFrame> => localFrames(this, req, signal)

  /** The derivation of `path`: itself if a .drv, else the job or the store that knows its outputs. */
  async derivationOf (path: string): Promise<string | undefined> {
    if (path.endsWith('.drv')) return path
    for (const job of this.ports.allJobs()) {
      if (Object.values(job.outputs).includes(path)) return job.drvPath
    }
    return await this.ports.deriver(path)
  }

  /**
   * The log of `drvPath` from wherever it is: this node's file, the peer building or having
   * built it for this owner, a peer whose beacon says it builds it, or any peer that has it.
   * The last frame is an end frame; found:false when nobody had it.
   */
  async * read (drvPath: string, follow: boolean, signal: AbortSignal): AsyncGenerator<SourcedFrame> {
    const { ports } = this
    const req = { drvPath, follow }
    // Following a job this node owns that has not started yet (log -f right after submit): wait for it.
    while (follow && !signal.aborted && !ports.runningHere(drvPath)) {
      const state = ports.job(drvPath)?.state
      if (state !== 'waiting' && state !== 'ready') break
      await sleep(WATCH_POLL_MS, undefined, { signal }).catch(() => {})
    }
    if (ports.runningHere(drvPath)) { yield * this.local(req, signal); return }
    const job = ports.job(drvPath)
    const remote: string[] = []
    const add = (p: string | undefined): void => { if (p !== undefined && p !== ports.selfId && !remote.includes(p)) remote.push(p) }
    // The worker holds the lease while it builds and while the owner imports what it built.
    if (job?.state === 'leased' || job?.state === 'importing') add(job.worker)
    // A build elsewhere is the fresher log: a local file may be of an earlier, failed attempt.
    if (remote.length === 0 && await exists(buildLogPath(ports.logDir, drvPath))) { yield * this.local(req, signal); return }
    add(job?.builtBy)
    for (const p of ports.peersBuilding(drvPath)) add(p)
    for (const p of ports.peers()) if (remote.length < MAX_PEERS_ASKED) add(p)
    for (const peer of remote) {
      if (signal.aborted) break
      const got = yield * this.relay(peer, req, signal)
      if (got) return
    }
    yield { type: 'end', found: false, outcome: this.outcome(drvPath) }
  }

  /** Relays `peer`'s frames; false (nothing yielded) when it does not have the log or cannot be reached. */
  private async * relay (peer: string, req: LogRequest, signal: AbortSignal): AsyncGenerator<SourcedFrame, boolean> {
    let yielded = false
    try {
      for await (const frame of requestLog(this.ports.network, peer, req, { signal })) {
        if (frame.type === 'end') {
          if (!frame.found && !yielded) return false
          // The builder may not know (it restarted); the owner does once the job is over.
          const outcome = frame.outcome === 'unknown' ? this.outcome(req.drvPath) : frame.outcome
          yield { ...frame, found: true, outcome, from: peer }
          return true
        }
        yielded = true
        yield { ...frame, from: peer }
      }
    } catch (err) {
      this.ports.log.debug(`reading the log of ${req.drvPath} from ${peer} failed: ${(err as Error).message}`)
      if (!yielded) return false
      yield { type: 'end', found: true, outcome: this.outcome(req.drvPath), from: peer }
      return true
    }
    return yielded
  }

  /**
   * For submit -L: calls `onLines` with the lines of every build of the submission, followed
   * while they run (and read whole if one was over between two looks). `stop` ends the looking
   * for new builds (the submission finished): what is being read is read to its end, then this
   * resolves. `cancel` stops everything (the client went away).
   */
  async watchSubmission (id: string, onLines: (drvPath: string, lines: string[]) => void, stop: AbortSignal, cancel: AbortSignal): Promise<void> {
    const seen = new Set<string>()
    // Builds over before the watch began are not replayed.
    for (const j of this.ports.submissionJobs(id)) if (j.state === 'built' || j.state === 'failed') seen.add(j.drvPath)
    const readers: Array<Promise<void>> = []
    const readOne = async (drvPath: string, follow: boolean): Promise<void> => {
      try {
        for await (const frame of this.read(drvPath, follow, cancel)) {
          if (frame.type === 'lines' && frame.lines.length > 0) onLines(drvPath, frame.lines)
        }
      } catch (err) {
        if (!cancel.aborted) this.ports.log.debug(`following the log of ${drvPath} failed: ${(err as Error).message}`)
      }
    }
    const look = (): void => {
      for (const j of this.ports.submissionJobs(id)) {
        if (seen.has(j.drvPath)) continue
        const building = j.state === 'leased'
        const over = (j.state === 'built' || j.state === 'failed') && (j.builtBy !== undefined || j.failure?.logTail !== undefined)
        if (!building && !over) continue
        seen.add(j.drvPath)
        readers.push(readOne(j.drvPath, building))
      }
    }
    while (!stop.aborted && !cancel.aborted) {
      look()
      await sleep(WATCH_POLL_MS, undefined, { signal: AbortSignal.any([stop, cancel]) }).catch(() => {})
    }
    // Builds that ended since the last look.
    if (!cancel.aborted) look()
    await Promise.allSettled(readers)
  }

  private remember (drvPath: string, outcome: LogOutcome): void {
    this.outcomes.delete(drvPath)
    this.outcomes.set(drvPath, outcome)
    if (this.outcomes.size > MAX_OUTCOMES_KEPT) {
      const oldest = this.outcomes.keys().next().value
      if (oldest !== undefined) this.outcomes.delete(oldest)
    }
  }

  private isRunningFile (name: string): boolean {
    // `<hash>-<name>.drv.log`: the build of /nix/store/<hash>-<name>.drv.
    return name.endsWith('.drv.log') && this.ports.runningHere(`/nix/store/${name.slice(0, -'.log'.length)}`)
  }

  /** Read by localFrames. */
  get logDir (): string { return this.ports.logDir }
  runningHere (drvPath: string): boolean { return this.ports.runningHere(drvPath) }
}

async function exists (path: string): Promise<boolean> {
  return await stat(path).then(() => true, () => false)
}

/**
 * The frames of this node's log of req.drvPath: its last LOG_BACKLOG_BYTES (from a line start)
 * or from req.fromByte, then, following a build running here, what it appends until it ends.
 */
async function * localFrames (logs: BuildLogs, req: LogRequest, signal: AbortSignal): AsyncGenerator<LogFrame> {
  const file = buildLogPath(logs.logDir, req.drvPath)
  let fh: Awaited<ReturnType<typeof open>> | undefined
  for (;;) {
    try {
      fh = await open(file, 'r')
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
    // A running build writes its file once its inputs are fetched.
    if (!req.follow || !logs.runningHere(req.drvPath) || signal.aborted) {
      yield { type: 'end', found: false, outcome: logs.outcome(req.drvPath) }
      return
    }
    await sleep(LOG_POLL_MS, undefined, { signal }).catch(() => {})
  }
  try {
    const size = (await fh.stat()).size
    let pos = Math.min(req.fromByte ?? Math.max(0, size - LOG_BACKLOG_BYTES), size)
    let skipped = pos
    // Starting inside a line (the cut of a long log): drop its rest.
    let dropFirst = req.fromByte === undefined && pos > 0
    const decoder = new TextDecoder('utf-8')
    let partial = ''
    let sent = 0
    let batch: string[] = []
    let batchBytes = 0
    const buf = Buffer.allocUnsafe(READ_CHUNK)
    let lastLook = false
    for (;;) {
      // Looked at before reading, so the read after the build ended gets its last bytes.
      const stillRunning = req.follow && logs.runningHere(req.drvPath)
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, READ_CHUNK, pos)
        if (bytesRead === 0) break
        pos += bytesRead
        const text = partial + decoder.decode(buf.subarray(0, bytesRead), { stream: true })
        const lines = text.split('\n')
        partial = lines.pop() ?? ''
        if (dropFirst && lines.length > 0) {
          skipped += Buffer.byteLength(lines.shift() ?? '') + 1
          dropFirst = false
        }
        for (const raw of lines) {
          const line = raw.length > LOG_LINE_CHARS ? raw.slice(0, LOG_LINE_CHARS) : raw
          sent += Buffer.byteLength(raw) + 1
          if (sent > LOG_MAX_BYTES_PER_REQUEST) {
            if (batch.length > 0) yield { type: 'lines', lines: batch }
            const total = (await fh.stat()).size
            yield { type: 'end', found: true, outcome: logs.outcome(req.drvPath), skippedBytes: skipped + Math.max(0, total - pos) }
            return
          }
          // Counted as JSON: control characters grow sixfold when escaped.
          const cost = JSON.stringify(line).length + 1
          if (batch.length >= LOG_MESSAGE_LINES || batchBytes + cost > LOG_MESSAGE_BYTES) {
            yield { type: 'lines', lines: batch }
            batch = []
            batchBytes = 0
          }
          batch.push(line)
          batchBytes += cost
        }
        if (signal.aborted) return
      }
      if (batch.length > 0) {
        yield { type: 'lines', lines: batch }
        batch = []
        batchBytes = 0
      }
      if (signal.aborted) return
      if (!stillRunning) {
        // The builder's last writes may land just after the scheduler hears the build ended.
        if (req.follow && !lastLook) { lastLook = true; await sleep(LOG_POLL_MS, undefined, { signal }).catch(() => {}); continue }
        break
      }
      await sleep(LOG_POLL_MS, undefined, { signal }).catch(() => {})
    }
    partial += decoder.decode()
    if (partial !== '' && !dropFirst) yield { type: 'lines', lines: [partial.slice(0, LOG_LINE_CHARS)] }
    yield { type: 'end', found: true, outcome: logs.outcome(req.drvPath), ...(skipped > 0 ? { skippedBytes: skipped } : {}) }
  } finally {
    await fh.close()
  }
}

export interface PruneOptions {
  maxAgeMs: number
  maxTotalBytes: number
  now: number
  /** Files never deleted (the logs of builds running now). */
  keep: (name: string) => boolean
}

/** Deletes logs older than maxAgeMs, then the oldest until the rest fit maxTotalBytes; returns how many. */
export async function pruneLogDir (dir: string, options: PruneOptions): Promise<number> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0
    throw err
  }
  const files: Array<{ name: string, mtime: number, size: number }> = []
  for (const name of names) {
    if (!name.endsWith('.log')) continue
    const s = await stat(join(dir, name)).catch(() => undefined)
    if (s?.isFile() === true) files.push({ name, mtime: s.mtimeMs, size: s.size })
  }
  files.sort((a, b) => a.mtime - b.mtime)
  let total = files.reduce((n, f) => n + f.size, 0)
  let removed = 0
  for (const f of files) {
    const tooOld = options.now - f.mtime > options.maxAgeMs
    if (!tooOld && total <= options.maxTotalBytes) continue
    if (options.keep(f.name)) continue
    await rm(join(dir, f.name), { force: true })
    total -= f.size
    removed++
  }
  return removed
}
