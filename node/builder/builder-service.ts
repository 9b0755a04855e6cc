// The node behind the builder socket: each BuildDerivation plain Nix sends becomes a one-job
// submission that only peers build (remoteOnly), whose outputs are unpacked in the socket's root
// for Nix to copy; the log lines stream back as they come; the failure is told as Nix's status.
// Also keeps the machines file (`builders = @file`) in step with what the mesh can build.
import { rm } from 'node:fs/promises'
import { BuildStatus } from '../../protocols/nix/daemon-wire.ts'
import type { FailureKind } from '../scheduler/job.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { Logger } from '../log.ts'
import type { SubmitOptions } from '../mesh/node-options.ts'
import type { BuilderStatus, JobResult, SubmissionReport } from '../mesh/reports.ts'
import { builderPaths, type BuilderPaths } from './builder-paths.ts'
import { BuilderRoot } from './builder-root.ts'
import { serveBuilderSocket, type BuilderSocket } from './builder-socket.ts'
import type { BuilderStore, BuildReply, BuildRequest } from './builder-store.ts'
import { machinesFileText, meshCanBuild, writeMachinesFile, type PeerCapabilities } from './machines-file.ts'

/** How often the machines file is compared with what the peers announce. */
export const MACHINES_REFRESH_MS = 2_000
/** Builds of plain Nix go before `meshbuild submit`'s default (lower is more urgent). */
export const BUILDER_PRIORITY = 50
/**
 * After the build ends, how long its last log lines may take to arrive before the reply goes to
 * Nix anyway: a followed log ends only at the building peer's next look at its file (~0.3 s,
 * which every build waited before; bench/builder.ts). A failure's tail is in its message.
 */
export const LOG_DRAIN_MS = 100
/** Lines of the log in a failure's message, as many as Nix's default `log-lines`. */
const FAILURE_LOG_LINES = 10
/** Unix socket paths are at most this long (sun_path, with its NUL). */
const MAX_SOCKET_PATH = 107

export interface BuilderPorts {
  dataDir: string
  store: StoreBackend
  log: Logger
  /** The live peers' capabilities (never this node's own: it does not build the socket's jobs). */
  peers: () => PeerCapabilities[]
  submit: (drvPaths: string[], options: SubmitOptions) => Promise<string>
  report: (id: string) => SubmissionReport | undefined
  watch: (id: string, listener: (report: SubmissionReport) => void) => () => void
  watchLogs: (id: string, onLines: (drvPath: string, lines: string[]) => void, stop: AbortSignal, cancel: AbortSignal) => Promise<void>
}

export class BuilderService implements BuilderStore {
  readonly root: BuilderRoot
  readonly paths: BuilderPaths
  private readonly ports: BuilderPorts
  private socket: BuilderSocket | undefined
  private machinesText: string | undefined
  private refreshTimer: ReturnType<typeof setInterval> | undefined
  private readonly builds = { built: 0, failed: 0, running: 0 }

  constructor (ports: BuilderPorts) {
    this.ports = ports
    this.paths = builderPaths(ports.dataDir)
    if (Buffer.byteLength(this.paths.socket) > MAX_SOCKET_PATH) {
      throw new Error(`the builder socket path ${this.paths.socket} is longer than a Unix socket allows (${MAX_SOCKET_PATH} bytes): use a shorter --data-dir`)
    }
    this.root = new BuilderRoot(this.paths.root, ports.store, ports.log)
  }

  async start (): Promise<void> {
    await this.root.start()
    this.socket = await serveBuilderSocket({ path: this.paths.socket, store: this, log: this.ports.log })
    await this.refreshMachines()
    this.refreshTimer = setInterval(() => { void this.refreshMachines() }, MACHINES_REFRESH_MS)
    this.refreshTimer.unref()
    this.ports.log.info(`builder socket at ${this.paths.socket}; nix.conf: builders = @${this.paths.machinesFile}`)
  }

  /** Empties the machines file first, so Nix stops sending builds, then closes the socket. */
  async stop (): Promise<void> {
    if (this.refreshTimer !== undefined) clearInterval(this.refreshTimer)
    await writeMachinesFile(this.paths.machinesFile, '').catch(() => {})
    await this.socket?.close()
    await rm(this.paths.socket, { force: true })
    this.root.stop()
  }

  status (): BuilderStatus {
    return { socket: this.paths.socket, machinesFile: this.paths.machinesFile, machines: (this.machinesText ?? '').trim(), connections: this.socket?.connections ?? 0, builds: { ...this.builds } }
  }

  private async refreshMachines (): Promise<void> {
    const text = machinesFileText(this.paths.socket, this.paths.root, this.ports.peers())
    if (text === this.machinesText) return
    try {
      await writeMachinesFile(this.paths.machinesFile, text)
      this.machinesText = text
      this.ports.log.info(text === '' ? 'no peer builds: the machines file is empty, so Nix builds locally' : `machines file: ${text.trim()}`)
    } catch (err) {
      this.ports.log.warn(`writing the machines file ${this.paths.machinesFile} failed: ${(err as Error).message}`)
    }
  }

  // --- the store Nix sees -------------------------------------------------------------------

  readonly queryPathInfo: BuilderStore['queryPathInfo'] = async (path) =>
    this.root.pathInfo(path) ?? await this.ports.store.queryPathInfo(path)

  readonly isValid: BuilderStore['isValid'] = async (paths) => await this.root.isValid(paths)

  // The client's inputs go into the node's store, where the mesh serves them to the workers.
  readonly importNars: BuilderStore['importNars'] = async (infos, nars) => await this.ports.store.importNars(infos, nars)

  readonly exportNar: BuilderStore['exportNar'] = (path) => this.ports.store.exportNar(path)

  readonly build = async (request: BuildRequest, onLog: (line: string) => void, signal: AbortSignal): Promise<BuildReply> => {
    this.builds.running++
    try {
      const reply = await this.buildInMesh(request, onLog, signal)
      if (reply.status === BuildStatus.Built) this.builds.built++
      else this.builds.failed++
      return reply
    } finally {
      this.builds.running--
    }
  }

  private async buildInMesh (request: BuildRequest, onLog: (line: string) => void, signal: AbortSignal): Promise<BuildReply> {
    const { drvPath, derivation, options } = request
    const startTime = Math.floor(Date.now() / 1000)
    const reply = (status: number, errorMsg = ''): BuildReply => ({ status, errorMsg, timesBuilt: status === BuildStatus.Built ? 1 : 0, startTime, stopTime: Math.floor(Date.now() / 1000) })
    const outputs = Object.values(derivation.outputs).map(o => o.path)
    if (outputs.length > 0 && outputs.every(p => this.root.pathInfo(p) !== undefined)) return reply(BuildStatus.Built)
    if (!(await this.ports.store.isValid([drvPath])).has(drvPath)) {
      return reply(BuildStatus.MiscFailure, `${drvPath} is not in the store of the meshbuild node behind this socket: it builds the derivations of the Nix store it runs with`)
    }
    const features = (derivation.env.requiredSystemFeatures ?? '').split(/\s+/).filter(f => f !== '')
    if (!meshCanBuild(this.ports.peers(), derivation.platform, features)) {
      return reply(BuildStatus.MiscFailure, `no peer of the mesh builds '${derivation.platform}'${features.length > 0 ? ` with features ${features.join(', ')}` : ''} now`)
    }
    const id = await this.ports.submit([drvPath], {
      priority: BUILDER_PRIORITY,
      remoteOnly: true,
      ...(options.timeout > 0 ? { timeout: options.timeout } : {}),
      ...(options.maxSilentTime > 0 ? { maxSilentTime: options.maxSilentTime } : {})
    })
    this.ports.log.info(`${drvPath}: building in the mesh for plain Nix (submission ${id})`)
    const finished = new AbortController()
    const drained = new AbortController()
    const logs = this.ports.watchLogs(id, (_drv, lines) => { for (const l of lines) onLog(l) }, finished.signal, AbortSignal.any([signal, drained.signal]))
      .catch((err: unknown) => { this.ports.log.debug(`following the log of ${drvPath}: ${(err as Error).message}`) })
    const report = await untilFinished(this.ports, id, signal)
    finished.abort()
    const drain = setTimeout(() => { drained.abort(new Error('the build is over')) }, LOG_DRAIN_MS)
    await logs
    clearTimeout(drain)
    const job = report?.results.find(r => r.drvPath === drvPath)
    if (job === undefined) return reply(BuildStatus.MiscFailure, signal.aborted ? 'the client went away' : `the mesh lost submission ${id}`)
    if (job.state === 'built' || job.state === 'substituted') return reply(BuildStatus.Built)
    return reply(statusOf(job.failure?.kind), failureMessage(drvPath, job))
  }
}

/** The submission's report once it has finished (undefined if the client went away first). */
async function untilFinished (ports: BuilderPorts, id: string, signal: AbortSignal): Promise<SubmissionReport | undefined> {
  return await new Promise(resolve => {
    let unwatch = (): void => {}
    const done = (r: SubmissionReport | undefined): void => {
      unwatch()
      signal.removeEventListener('abort', onAbort)
      resolve(r)
    }
    const onAbort = (): void => { done(undefined) }
    signal.addEventListener('abort', onAbort)
    unwatch = ports.watch(id, r => { if (r.state !== 'running') done(r) })
    // It may have finished before the watch began.
    const now = ports.report(id)
    if (now !== undefined && now.state !== 'running') done(now)
  })
}

/** The mesh's failure classes as the BuildResult statuses Nix's own daemon would give. */
function statusOf (kind: FailureKind | undefined): number {
  switch (kind) {
    case 'build-failed': return BuildStatus.PermanentFailure
    case 'timed-out': return BuildStatus.TimedOut
    case 'hash-mismatch': return BuildStatus.OutputRejected
    case 'not-deterministic': return BuildStatus.NotDeterministic
    default: return BuildStatus.MiscFailure
  }
}

/** Like the message of Nix's daemon for a failed build: what happened, then the log's last lines. */
function failureMessage (drvPath: string, job: JobResult): string {
  const f = job.failure
  if (f === undefined) return `the mesh could not build ${drvPath}`
  const where = job.builtBy ?? job.worker
  const tail = (f.logTail ?? []).filter(l => !l.startsWith('error:')).slice(-FAILURE_LOG_LINES)
  let msg = `${f.message}${where !== undefined ? ` (on mesh peer ${where})` : ''}`
  if (tail.length > 0) msg += `;\nlast ${tail.length} log lines:\n${tail.map(l => `> ${l}`).join('\n')}`
  return msg
}
