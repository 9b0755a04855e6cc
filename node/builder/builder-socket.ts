// The builder socket: a Unix socket that Nix's stock build-remote uses as a remote builder
// (`unix://<socket>?root=<dir>` in `builders`). It speaks the server side of the daemon worker
// protocol (protocols/nix/daemon-server-wire.ts) for the operations build-remote and `nix copy`
// send, and hands the work to a BuilderStore. One connection's faults never reach another.
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { chmod, lstat, mkdtemp, rename, rmdir, stat, unlink } from 'node:fs/promises'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { basename, dirname, join } from 'node:path'
import {
  WireReader, WireWriter, DaemonProtocolError, FramedReader, readNar, RESULT_BUILD_LOG_LINE,
  OP_IS_VALID_PATH, OP_SET_OPTIONS, OP_QUERY_PATH_INFO, OP_QUERY_VALID_PATHS, OP_NAR_FROM_PATH,
  OP_ADD_TO_STORE_NAR, OP_ADD_MULTIPLE_TO_STORE, OP_BUILD_DERIVATION, OP_QUERY_MISSING
} from '../../protocols/nix/daemon-wire.ts'
import {
  serverHandshake, refuseClientVersion, minorOf, opName, BadRequest, MINOR, readSetOptions, buildOptionsOf,
  readPathRequest, readQueryValidPaths, readAddToStoreNar, readAddMultipleToStore, readMultipleCount,
  readValidPathInfo, readBuildDerivation, readQueryMissing, encodeMissing, encodePathInfoReply, encodeBuildResult,
  stderrLast, stderrNext, stderrError, stderrStartBuild, stderrResult, stderrStopActivity
} from '../../protocols/nix/daemon-server-wire.ts'
import type { Logger } from '../log.ts'
import type { BuilderStore, BuildReply, ClientBuildOptions } from './builder-store.ts'
import type { ImportInfo } from '../nix/store-backend.ts'

export const DEFAULT_SOCKET_MODE = 0o600
/** The whole handshake must be done within this. */
export const HANDSHAKE_TIMEOUT_MS = 10_000
/** Once a request has begun, the client may not fall silent for longer than this. */
export const REQUEST_SILENCE_MS = 60_000
/** Log output a slow client may leave unsent before further lines are dropped (noted once). */
const MAX_UNSENT_LOG_BYTES = 16 * 1024 * 1024
/** What a connection may hold unread before the socket is paused. */
const MAX_QUEUED_BYTES = 1024 * 1024
/** The Nix version the handshake reports (≥ 1.33). */
const SERVER_NIX_VERSION = '2.8.0 (meshbuild builder socket)'
const DEFAULT_OPTIONS: ClientBuildOptions = { maxSilentTime: 0, timeout: 0, verbosity: 3 }

export interface BuilderSocketOptions {
  path: string
  mode?: number
  store: BuilderStore
  log: Logger
  handshakeTimeoutMs?: number
  requestSilenceMs?: number
}

export interface BuilderSocket {
  readonly path: string
  /** Connections open now. */
  readonly connections: number
  /** Stops listening, ends every connection and aborts the builds they run. */
  close: () => Promise<void>
}

export class SocketInUse extends Error {
  override name = 'SocketInUse'
}

class ClientTimeout extends Error {
  override name = 'ClientTimeout'
}

/**
 * The bytes of one connection as an async iterator for WireReader, with the deadlines: a whole
 * one for the handshake; during a request, a bound on each silence. Between requests a client
 * may idle (Nix keeps connections in a pool); its first byte starts the next request.
 */
class ConnectionSource implements AsyncIterator<Uint8Array> {
  private readonly queue: Buffer[] = []
  private queued = 0
  private ended = false
  private failure: Error | null = null
  private wake: (() => void) | null = null
  private deadline: { at: number, ms: number, what: string } | null = null
  private idle = false

  private readonly socket: Socket
  private readonly silenceMs: number

  constructor (socket: Socket, silenceMs: number) {
    this.socket = socket
    this.silenceMs = silenceMs
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk)
      this.queued += chunk.length
      if (this.queued > MAX_QUEUED_BYTES) socket.pause()
      this.poke()
    })
    socket.on('end', () => { this.ended = true; this.poke() })
    socket.on('close', () => { this.ended = true; this.poke() })
    socket.on('error', (err) => { this.failure ??= err; this.poke() })
  }

  private poke (): void { const w = this.wake; this.wake = null; w?.() }

  /** The handshake: everything by `ms` from now. */
  handshake (ms: number): void { this.deadline = { at: Date.now() + ms, ms, what: 'the handshake' } }
  /** Between requests: no deadline until the next byte. */
  betweenRequests (): void { this.deadline = null; this.idle = true }

  async next (): Promise<IteratorResult<Uint8Array>> {
    const silenceFrom = Date.now()
    for (;;) {
      const chunk = this.queue.shift()
      if (chunk !== undefined) {
        this.queued -= chunk.length
        if (this.queued <= MAX_QUEUED_BYTES && this.socket.isPaused()) this.socket.resume()
        this.idle = false
        return { done: false, value: chunk }
      }
      if (this.failure != null) throw this.failure
      if (this.ended) return { done: true, value: undefined }
      const limit = this.deadline?.at ?? (this.idle ? Infinity : silenceFrom + this.silenceMs)
      const left = limit - Date.now()
      if (left <= 0) {
        throw new ClientTimeout(this.deadline != null
          ? `the client did not complete ${this.deadline.what} within ${this.deadline.ms} ms`
          : `the client fell silent for ${this.silenceMs} ms in the middle of a request`)
      }
      await new Promise<void>(resolve => {
        const timer = left === Infinity ? undefined : setTimeout(() => { this.wake = null; resolve() }, left)
        this.wake = () => { clearTimeout(timer); resolve() }
      })
    }
  }
}

/** Writes with backpressure; a gone client shows up as the next read's end. */
async function write (socket: Socket, bytes: Uint8Array): Promise<void> {
  if (socket.destroyed || socket.writableEnded) return
  if (socket.write(bytes)) return
  const stop = new AbortController()
  try {
    await Promise.race([once(socket, 'drain', { signal: stop.signal }), once(socket, 'close', { signal: stop.signal })])
  } catch { /* closed: the read that follows reports it */ } finally {
    stop.abort()
  }
}

/** A failure the client can be told of, the stream being in step; any other closes the connection. */
function inStep (err: unknown, socket: Socket): boolean {
  return !(err instanceof DaemonProtocolError) && !(err instanceof ClientTimeout) && !socket.destroyed
}

/** After a framed stream was drained: it must have reached its end frame to be in step. */
function checkEnded (frames: FramedReader): void {
  if (!frames.ended) throw new DaemonProtocolError('the framed stream broke off before its end')
}

function messageOf (err: unknown): string { return err instanceof Error ? err.message : String(err) }

interface Context {
  store: BuilderStore
  log: Logger
  /** Activity ids are unique per process, as a daemon's are. */
  nextActivity: () => number
}

class Connection {
  private readonly source: ConnectionSource
  private readonly reader: WireReader
  private clientVersion = 0
  private options: ClientBuildOptions = DEFAULT_OPTIONS
  readonly aborter = new AbortController()

  private readonly socket: Socket
  private readonly ctx: Context
  private readonly log: Logger
  private readonly timeouts: { handshake: number, silence: number }

  constructor (socket: Socket, ctx: Context, log: Logger, timeouts: { handshake: number, silence: number }) {
    this.socket = socket
    this.ctx = ctx
    this.log = log
    this.timeouts = timeouts
    this.source = new ConnectionSource(socket, timeouts.silence)
    this.reader = new WireReader(this.source)
    // Like a daemon's MonitorFdHup: a client gone mid-build stops the build.
    socket.once('close', () => { this.aborter.abort(new Error('the client closed the connection')) })
  }

  private async send (bytes: Uint8Array): Promise<void> { await write(this.socket, bytes) }

  async serve (): Promise<void> {
    try {
      this.source.handshake(this.timeouts.handshake)
      this.clientVersion = await serverHandshake(this.reader, async (b) => { await this.send(b) }, SERVER_NIX_VERSION)
      const refusal = refuseClientVersion(this.clientVersion)
      if (refusal != null) {
        this.log.warn(`refusing the client: ${refusal}`)
        await this.send(stderrError(refusal, this.clientVersion))
        return
      }
      await this.send(stderrLast())
      for (;;) {
        this.source.betweenRequests()
        let op: number
        try {
          op = await this.reader.readU64('operation')
        } catch (err) {
          if (err instanceof DaemonProtocolError && /closed while reading operation$/.test(err.message)) return
          throw err
        }
        if (!await this.perform(op)) return
      }
    } catch (err) {
      // A probe that connects and leaves at once (meshbuild nix-config asks whether the socket
      // answers) is not worth a warning; anything that sent bytes and then broke the protocol is.
      if (this.clientVersion === 0 && err instanceof DaemonProtocolError && /closed while reading client magic$/.test(err.message)) this.log.debug('a client left before the handshake')
      else this.log.warn(`closing the connection: ${messageOf(err)}`)
    } finally {
      this.socket.destroy()
    }
  }

  /** One operation; false when the connection must end after it. */
  private async perform (op: number): Promise<boolean> {
    this.log.debug(`operation ${opName(op)}`)
    const v = this.clientVersion
    const { store } = this.ctx
    try {
      switch (op) {
        case OP_SET_OPTIONS:
          this.options = buildOptionsOf(await readSetOptions(this.reader, v))
          await this.send(stderrLast())
          return true
        case OP_IS_VALID_PATH: {
          const path = await readPathRequest(this.reader)
          const valid = (await store.isValid([path])).has(path)
          await this.send(concat(stderrLast(), new WireWriter().bool(valid).toBytes()))
          return true
        }
        case OP_QUERY_VALID_PATHS: {
          // Substitution is the node's business: the flag is read and not acted on.
          const { paths } = await readQueryValidPaths(this.reader, v)
          const valid = paths.length === 0 ? new Set<string>() : await store.isValid(paths)
          await this.send(concat(stderrLast(), new WireWriter().strings(paths.filter(p => valid.has(p))).toBytes()))
          return true
        }
        case OP_QUERY_PATH_INFO: {
          const path = await readPathRequest(this.reader)
          const info = await store.queryPathInfo(path)
          await this.send(concat(stderrLast(), encodePathInfoReply(info)))
          return true
        }
        case OP_QUERY_MISSING: {
          // What `nix path-info` asks before it prints: nothing is built or substituted here.
          const paths = await readQueryMissing(this.reader)
          const valid = paths.length === 0 ? new Set<string>() : await store.isValid(paths)
          await this.send(concat(stderrLast(), encodeMissing(paths.filter(p => !valid.has(p)))))
          return true
        }
        case OP_NAR_FROM_PATH: return await this.narFromPath()
        case OP_ADD_TO_STORE_NAR: return await this.addToStoreNar()
        case OP_ADD_MULTIPLE_TO_STORE: return await this.addMultipleToStore()
        case OP_BUILD_DERIVATION: return await this.buildDerivation()
        default: {
          // Its request's fields are unknown, so the stream cannot be followed past it.
          const message = `the meshbuild builder socket does not serve operation ${opName(op)}`
          this.log.warn(message)
          await this.send(stderrError(message, v))
          return false
        }
      }
    } catch (err) {
      if (!inStep(err, this.socket)) throw err
      this.log.warn(`${opName(op)} failed: ${messageOf(err)}`)
      await this.send(stderrError(messageOf(err), v))
      return true
    }
  }

  private async narFromPath (): Promise<boolean> {
    const path = await readPathRequest(this.reader)
    if (await this.ctx.store.queryPathInfo(path) == null) throw new BadRequest(`path '${path}' is not valid`)
    await this.send(stderrLast())
    // Past STDERR_LAST no error can be told: a failing export ends the connection (as a daemon's dumpPath does).
    try {
      for await (const chunk of this.ctx.store.exportNar(path)) await this.send(chunk)
    } catch (err) {
      throw new DaemonProtocolError(`exporting '${path}' failed mid-NAR: ${messageOf(err)}`)
    }
    return true
  }

  /** Imports one NAR unless the path is valid already; the NAR is read to its end either way. */
  private async importOne (info: ImportInfo, nar: AsyncIterable<Uint8Array>): Promise<void> {
    if ((await this.ctx.store.isValid([info.path])).has(info.path)) return
    await this.ctx.store.importNars([info], (async function * () { yield { path: info.path, nar } })())
  }

  private async addToStoreNar (): Promise<boolean> {
    if (minorOf(this.clientVersion) < MINOR.framedNar) throw new DaemonProtocolError('AddToStoreNar without frames (client below 1.23)')
    let request: Awaited<ReturnType<typeof readAddToStoreNar>> | null = null
    let failure: unknown = null
    try {
      request = await readAddToStoreNar(this.reader)
    } catch (err) {
      if (!(err instanceof BadRequest)) throw err
      failure = err
    }
    const frames = new FramedReader(this.reader)
    if (request != null) {
      try { await this.importOne(request.info, frames) } catch (err) { failure = err }
    }
    // The frames are consumed whatever happened, so the reply is in step with the stream.
    await frames.drain()
    checkEnded(frames)
    if (failure != null) throw failure
    await this.send(stderrLast())
    return true
  }

  private async addMultipleToStore (): Promise<boolean> {
    await readAddMultipleToStore(this.reader)
    const frames = new FramedReader(this.reader)
    const inner = new WireReader(frames)
    let failure: unknown = null
    try {
      const count = await readMultipleCount(inner)
      for (let i = 0; i < count; i++) {
        const info = await readValidPathInfo(inner)
        const nar = readNar(inner)
        const unclosable: AsyncIterable<Uint8Array> = { [Symbol.asyncIterator]: () => ({ next: async () => await nar.next() }) }
        try {
          await this.importOne(info, unclosable)
        } finally {
          for (;;) if ((await nar.next()).done === true) break
        }
      }
    } catch (err) {
      failure = err
    }
    await frames.drain()
    checkEnded(frames)
    // The frames ended where they should: a malformed entry inside them can be told, not fatal.
    if (failure instanceof DaemonProtocolError) throw new BadRequest(`AddMultipleToStore's stream: ${failure.message}`)
    if (failure != null) throw failure
    await this.send(stderrLast())
    return true
  }

  private async buildDerivation (): Promise<boolean> {
    const request = await readBuildDerivation(this.reader)
    const activity = this.ctx.nextActivity()
    const activities = minorOf(this.clientVersion) >= MINOR.activities
    if (activities) await this.send(stderrStartBuild(activity, request.drvPath))
    let dropped = 0
    const onLog = (line: string): void => {
      if (this.socket.destroyed) return
      // onLog cannot wait: a client that does not read its log loses lines, not our memory.
      if (this.socket.writableLength > MAX_UNSENT_LOG_BYTES) { dropped++; return }
      if (dropped > 0) {
        this.log.warn(`${request.drvPath}: the client did not keep up with the build log; ${dropped} lines dropped`)
        line = `[meshbuild: ${dropped} log lines dropped]\n${line}`
        dropped = 0
      }
      this.socket.write(activities ? stderrResult(activity, RESULT_BUILD_LOG_LINE, [line]) : stderrNext(`${line}\n`))
    }
    this.log.info(`building ${request.drvPath} (timeout ${this.options.timeout} s, max silent ${this.options.maxSilentTime} s)`)
    let reply: BuildReply
    try {
      reply = await this.ctx.store.build({ ...request, options: this.options }, onLog, this.aborter.signal)
    } finally {
      if (activities) await this.send(stderrStopActivity(activity))
    }
    await this.send(concat(stderrLast(), encodeBuildResult(reply, this.clientVersion)))
    return true
  }
}

function concat (...parts: Uint8Array[]): Uint8Array { return Buffer.concat(parts) }

/** Refuses a path another process serves; removes a stale socket file nobody answers on. */
async function clearStale (path: string): Promise<void> {
  let st
  try { st = await lstat(path) } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  if (!st.isSocket()) throw new SocketInUse(`${path} exists and is not a socket; not replacing it`)
  const answered = await new Promise<boolean>(resolve => {
    const probe = createConnection(path)
    probe.once('connect', () => { probe.destroy(); resolve(true) })
    probe.once('error', () => { resolve(false) })
  })
  if (answered) throw new SocketInUse(`another process is serving ${path}`)
  await unlink(path)
}

/**
 * Starts serving: 1. clear a stale socket file, 2. listen in a fresh 0700 directory beside the
 * path (nobody else can connect there), 3. chmod the socket to `mode`, 4. rename it into place,
 * so the socket is never reachable with other permissions.
 */
export async function serveBuilderSocket (options: BuilderSocketOptions): Promise<BuilderSocket> {
  const { path, store } = options
  const log = options.log.child('builder-socket')
  const mode = options.mode ?? DEFAULT_SOCKET_MODE
  const timeouts = { handshake: options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS, silence: options.requestSilenceMs ?? REQUEST_SILENCE_MS }
  await clearStale(path)

  let activityCounter = 0
  const activityBase = (process.pid % 0x10000) * 2 ** 32
  const ctx: Context = { store, log, nextActivity: () => activityBase + (++activityCounter) }
  const open = new Map<Socket, Promise<void>>()
  const connections = new Set<Connection>()
  let serial = 0

  const server: Server = createServer({ allowHalfOpen: false }, (socket) => {
    const id = ++serial
    const connection = new Connection(socket, ctx, log.child(`conn ${id}`), timeouts)
    connections.add(connection)
    const served = connection.serve().finally(() => { connections.delete(connection); open.delete(socket) })
    open.set(socket, served)
  })
  server.on('error', (err) => { log.error(`listening on ${path}: ${err.message}`) })

  const staging = await mkdtemp(join(dirname(path), `.${basename(path)}.`))
  const temp = join(staging, randomBytes(4).toString('hex'))
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(temp, () => { server.off('error', reject); resolve() })
    })
    await chmod(temp, mode)
    await rename(temp, path)
  } catch (err) {
    server.close()
    throw err
  } finally {
    await rmdir(staging).catch(() => {})
  }
  const ino = (await stat(path)).ino
  log.info(`serving Nix's build-remote on ${path} (mode ${mode.toString(8)})`)

  let closing: Promise<void> | null = null
  return {
    path,
    get connections () { return open.size },
    close: async () => {
      closing ??= (async () => {
        const stopped = new Promise<void>(resolve => { server.close(() => { resolve() }) })
        for (const c of connections) c.aborter.abort(new Error('the builder socket is closing'))
        for (const socket of open.keys()) socket.destroy()
        await Promise.allSettled([...open.values()])
        await stopped
        // Only our own socket: another server may have taken the path since.
        try { if ((await stat(path)).ino === ino) await unlink(path) } catch { /* gone already */ }
      })()
      await closing
    }
  }
}
