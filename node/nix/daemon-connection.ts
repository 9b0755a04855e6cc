// One connection to the local Nix daemon over its worker protocol: as root, a `nix-daemon
// --stdio` child in its own process group (a trusted local store without a socket); otherwise
// the daemon's Unix socket. Requests go one at a time; the wire format is
// protocols/nix/daemon-wire.ts, the operations follow Nix 2.8's remote-store.cc.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createConnection } from 'node:net'
import type { Readable, Writable } from 'node:stream'
import { Hash } from '../../protocols/nix/hash.ts'
import { isStorePath, NIX_STORE_DIR } from '../../protocols/nix/store-path.ts'
import {
  WireWriter, WireReader, readStderr, readServerHello, readBuildResult, readNar, frameHeader, DaemonProtocolError,
  WORKER_MAGIC_1, PROTOCOL_VERSION, FRAME_END, VERBOSITY_ERROR, type BuildResult,
  OP_QUERY_VALID_PATHS, OP_QUERY_PATH_INFO, OP_QUERY_PATH_FROM_HASH_PART, OP_ADD_TEMP_ROOT, OP_QUERY_MISSING,
  OP_SET_OPTIONS, OP_BUILD_PATHS_WITH_RESULTS, OP_NAR_FROM_PATH, OP_ADD_TO_STORE_NAR, OP_COLLECT_GARBAGE, GC_DELETE_SPECIFIC
} from '../../protocols/nix/daemon-wire.ts'
import { killProcessGroups, processGroupsBelow, stopOnAbort } from './exec.ts'
import { nixEnv, type NixSettings } from './nix-config.ts'
import { InvalidStorePath, type ImportInfo, type PathInfo } from './store-backend.ts'

/** The minor version from which the server sends its Nix version after the handshake. */
const MINOR_SENDS_NIX_VERSION = 33
const MINOR_MASK = 0xff
const STDERR_TAIL_CHARS = 2000
/** Build mode "normal" of BuildPathsWithResults. */
const BUILD_MODE_NORMAL = 0
export const DEFAULT_DAEMON_SOCKET = '/nix/var/nix/daemon-socket/socket'

export class DaemonConnectionLost extends Error {
  override name = 'DaemonConnectionLost'
}

export interface DaemonOpenOptions {
  settings?: NixSettings
  /** Connect to this daemon socket instead of starting `nix-daemon --stdio`. */
  socketPath?: string
  /** How long the handshake may take before the connection is given up (default 30 s). */
  openTimeoutMs?: number
}

const OPEN_TIMEOUT_MS = 30_000

/** SetOptions: what a build may take, sent before each build (the daemon keeps them per connection). */
export interface BuildSettings {
  maxBuildJobs: number
  /** Seconds; 0 for no limit. */
  maxSilentTime: number
  /** Seconds; 0 for no limit (sent as the `timeout` setting). */
  timeout: number
  buildCores: number
  useSubstitutes: boolean
  /** Settings sent by name, e.g. `system-features`. */
  overrides: Record<string, string>
}

export interface MissingPaths {
  willBuild: string[]
  willSubstitute: string[]
  unknown: string[]
  downloadSize: number
  narSize: number
}

/** How the bytes reach the daemon: a child's pipes or a socket. */
interface Transport {
  readonly input: Readable
  readonly output: Writable
  readonly describe: string
  /** What the daemon said on its own stderr, for error messages (a child only). */
  stderrTail: () => string
  /** Why it went away, when it did. */
  exitReason: () => string
  /** Settles once the daemon (or the socket) is gone, with the temporary roots it held. */
  readonly gone: Promise<void>
  destroy: () => void
  /** Asks it to stop a running build (SIGTERM, then SIGKILL with its process groups). */
  stopOnAbort: (signal: AbortSignal, graceMs: number) => () => void
}

function childTransport (settings: NixSettings | undefined): Transport {
  const child: ChildProcess = spawn('nix-daemon', ['--stdio'], { env: nixEnv(settings), detached: true, stdio: ['pipe', 'pipe', 'pipe'] })
  let tail = ''
  child.stderr?.on('data', (d: Buffer) => { tail = (tail + d.toString()).slice(-STDERR_TAIL_CHARS) })
  child.on('error', (err) => { tail += ` (${err.message})` })
  child.stdin?.on('error', () => {}) // EPIPE when the daemon is gone: the next read says so
  if (child.stdin == null || child.stdout == null) throw new DaemonProtocolError('nix-daemon has no pipes')
  const gone = new Promise<void>(resolve => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    child.once('exit', () => { resolve() })
    child.once('error', () => { resolve() })
  })
  return {
    gone,
    input: child.stdout,
    output: child.stdin,
    describe: 'nix-daemon --stdio',
    stderrTail: () => tail.trim(),
    exitReason: () => child.exitCode !== null ? `exit code ${child.exitCode}` : child.signalCode !== null ? `signal ${child.signalCode}` : 'closed its output',
    destroy: () => {
      if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
      // A builder runs in a session of its own: killed with the daemon's group, it would go on.
      const builders = processGroupsBelow(child.pid)
      try { process.kill(-child.pid, 'SIGKILL') } catch { /* already gone */ }
      killProcessGroups(builders, 'SIGKILL')
    },
    stopOnAbort: (signal, graceMs) => stopOnAbort(child, signal, graceMs)
  }
}

function socketTransport (path: string): Transport {
  const socket = createConnection(path)
  let error = ''
  socket.on('error', (err) => { error = err.message })
  const gone = new Promise<void>(resolve => { socket.once('close', () => { resolve() }) })
  return {
    gone,
    input: socket,
    output: socket,
    describe: `the Nix daemon at ${path}`,
    stderrTail: () => error,
    exitReason: () => error !== '' ? error : 'closed the connection',
    destroy: () => { socket.destroy() },
    // The daemon interrupts a client's build when its connection closes.
    stopOnAbort: (signal) => {
      const onAbort = (): void => { socket.destroy() }
      signal.addEventListener('abort', onAbort, { once: true })
      return () => { signal.removeEventListener('abort', onAbort) }
    }
  }
}

export class DaemonConnection {
  readonly serverVersion: number
  readonly nixVersion: string
  /** Requests answered so far (the pool recycles a connection after a number of them). */
  requests = 0
  private readonly transport: Transport
  private readonly reader: WireReader
  private chain: Promise<unknown> = Promise.resolve()

  private constructor (transport: Transport, reader: WireReader, serverVersion: number, nixVersion: string) {
    this.transport = transport
    this.reader = reader
    this.serverVersion = serverVersion
    this.nixVersion = nixVersion
  }

  static async open (options: DaemonOpenOptions = {}): Promise<DaemonConnection> {
    const transport = options.socketPath != null ? socketTransport(options.socketPath) : childTransport(options.settings)
    const reader = new WireReader(transport.input[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>)
    const timeoutMs = options.openTimeoutMs ?? OPEN_TIMEOUT_MS
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; transport.destroy() }, timeoutMs)
    try {
      await write(transport.output, new WireWriter().u64(WORKER_MAGIC_1).toBytes())
      const server = await readServerHello(reader)
      const version = Math.min(server, PROTOCOL_VERSION)
      // The client's version, then (minor ≥ 14) no CPU affinity and (minor ≥ 11) no reserve-space.
      await write(transport.output, new WireWriter().u64(version).u64(0).u64(0).toBytes())
      const nixVersion = (version & MINOR_MASK) >= MINOR_SENDS_NIX_VERSION ? await reader.readString('server Nix version') : ''
      await readStderr(reader)
      return new DaemonConnection(transport, reader, version, nixVersion)
    } catch (err) {
      transport.destroy()
      if (timedOut) throw new DaemonConnectionLost(`${transport.describe} did not complete the handshake within ${timeoutMs} ms`)
      throw lost(err, transport)
    } finally {
      clearTimeout(timer)
    }
  }

  /** Runs one exchange at a time: a request's bytes and its whole reply. */
  private exclusive<T> (run: () => Promise<T>): Promise<T> {
    const guarded = async (): Promise<T> => {
      try {
        const result = await run()
        this.requests++
        return result
      } catch (err) {
        throw lost(err, this.transport)
      }
    }
    const result = this.chain.then(guarded, guarded)
    this.chain = result.catch(() => {})
    return result
  }

  private request<T> (body: Uint8Array, reply: (r: WireReader) => Promise<T>, onLog?: (line: string) => void): Promise<T> {
    return this.exclusive(async () => {
      await write(this.transport.output, body)
      await readStderr(this.reader, onLog)
      return await reply(this.reader)
    })
  }

  private check (path: string): void {
    if (!isStorePath(path)) throw new InvalidStorePath(path, NIX_STORE_DIR)
  }

  async isValid (paths: string[]): Promise<Set<string>> {
    for (const p of paths) this.check(p)
    const valid = await this.request(new WireWriter().u64(OP_QUERY_VALID_PATHS).strings(paths).bool(false).toBytes(),
      async (r) => await r.readStrings('valid paths'))
    return new Set(valid)
  }

  async queryPathInfo (path: string): Promise<PathInfo | null> {
    return (await this.queryPathInfos([path])).get(path) ?? null
  }

  /**
   * Registrations of the valid ones among `paths`. The requests are written at once and the
   * replies read in order (the daemon answers one request after another): one round trip.
   */
  async queryPathInfos (paths: string[]): Promise<Map<string, PathInfo>> {
    for (const p of paths) this.check(p)
    const body = new WireWriter()
    for (const p of paths) body.u64(OP_QUERY_PATH_INFO).string(p)
    return await this.exclusive(async () => {
      await write(this.transport.output, body.toBytes())
      const out = new Map<string, PathInfo>()
      for (const path of paths) {
        await readStderr(this.reader)
        const info = await readPathInfo(this.reader, path)
        if (info != null) out.set(path, info)
      }
      return out
    })
  }

  async queryPathFromHashPart (hashPart: string): Promise<string | null> {
    const path = await this.request(new WireWriter().u64(OP_QUERY_PATH_FROM_HASH_PART).string(hashPart).toBytes(),
      async (r) => await r.readString('path from hash part'))
    return path === '' ? null : path
  }

  /** Keeps `path` from the garbage collector for as long as this connection lives. */
  async addTempRoot (path: string): Promise<void> {
    this.check(path)
    await this.request(new WireWriter().u64(OP_ADD_TEMP_ROOT).string(path).toBytes(), async (r) => await r.readU64('add temp root reply'))
  }

  /** `targets` are derived paths: a store path, or `drv!*` / `drv!out,dev` for a derivation's outputs. */
  async queryMissing (targets: string[]): Promise<MissingPaths> {
    return await this.request(new WireWriter().u64(OP_QUERY_MISSING).strings(targets).toBytes(), async (r) => ({
      willBuild: await r.readStrings('will build'),
      willSubstitute: await r.readStrings('will substitute'),
      unknown: await r.readStrings('unknown'),
      downloadSize: await r.readU64('download size'),
      narSize: await r.readU64('nar size')
    }))
  }

  async setOptions (s: BuildSettings): Promise<void> {
    const w = new WireWriter().u64(OP_SET_OPTIONS)
      .bool(false) // keep failed
      .bool(false) // keep going
      .bool(false) // try fallback
      .u64(VERBOSITY_ERROR) // the daemon's own messages: errors only; builder output comes as results
      .u64(s.maxBuildJobs)
      .u64(s.maxSilentTime)
      .bool(true) // obsolete use-build-hook
      .u64(VERBOSITY_ERROR) // verbose build
      .u64(0) // obsolete log type
      .u64(0) // obsolete print build trace
      .u64(s.buildCores)
      .bool(s.useSubstitutes)
    const overrides = Object.entries({ ...s.overrides, timeout: String(s.timeout) })
    w.u64(overrides.length)
    for (const [name, value] of overrides) w.string(name).string(value)
    await this.request(w.toBytes(), async () => {})
  }

  /** Builds the derived paths; every builder log line goes to `onLog` as it arrives. */
  async buildPathsWithResults (targets: string[], onLog?: (line: string) => void): Promise<BuildResult[]> {
    const body = new WireWriter().u64(OP_BUILD_PATHS_WITH_RESULTS).strings(targets).u64(BUILD_MODE_NORMAL).toBytes()
    return await this.request(body, async (r) => {
      const count = await r.readU64('build results count')
      if (count !== targets.length) throw new DaemonProtocolError(`build results count: expected ${targets.length}, got ${count}`)
      const results: BuildResult[] = []
      for (let i = 0; i < count; i++) results.push(await readBuildResult(r))
      return results
    }, onLog)
  }

  /**
   * The NAR of a valid path (the daemon dumps whatever is on disk at that name, registered or
   * not: check validity first). The connection is held until the NAR has been read to its end;
   * a consumer that stops early leaves it unusable (close it).
   */
  async * narFromPath (path: string): AsyncGenerator<Uint8Array> {
    this.check(path)
    let release = (): void => {}
    const held = new Promise<void>(resolve => { release = resolve })
    const turn = this.chain
    this.chain = held
    await turn
    try {
      await write(this.transport.output, new WireWriter().u64(OP_NAR_FROM_PATH).string(path).toBytes())
      await readStderr(this.reader)
      yield * readNar(this.reader)
      this.requests++
    } catch (err) {
      throw lost(err, this.transport)
    } finally {
      release()
    }
  }

  /**
   * Registers a NAR (AddToStoreNar, framed): the daemon checks its hash and size against `info`.
   * Signatures and CA go with it, as `nix copy` sends them. An error from `nar` leaves the
   * connection mid-stream: close it (the daemon then registers nothing of it).
   */
  async addToStoreNar (info: ImportInfo, nar: AsyncIterable<Uint8Array>): Promise<void> {
    for (const p of [info.path, ...info.references, ...(info.deriver != null ? [info.deriver] : [])]) this.check(p)
    const header = new WireWriter().u64(OP_ADD_TO_STORE_NAR)
      .string(info.path)
      .string(info.deriver ?? '')
      .string(Buffer.from(info.narHash.digest).toString('hex'))
      .strings(info.references)
      .u64(0) // registration time: now
      .u64(info.narSize)
      .bool(false) // ultimate: not built here
      .strings(info.signatures ?? [])
      .string(info.ca ?? '')
      .bool(false) // repair
      .bool(true) // don't check signatures: meshbuild checked them before the import
      .toBytes()
    await this.exclusive(async () => {
      await write(this.transport.output, header)
      // The daemon may log while it reads the frames: its messages are read meanwhile.
      const replied = readStderr(this.reader)
      replied.catch(() => {})
      for await (const chunk of nar) {
        if (chunk.length === 0) continue
        await write(this.transport.output, frameHeader(chunk.length))
        await write(this.transport.output, chunk)
      }
      await write(this.transport.output, FRAME_END)
      await replied
    })
  }

  /**
   * Deletes `paths` (CollectGarbage, gcDeleteSpecific) unless something keeps them alive: a
   * reference, a GC root, or a temporary root of a live connection. Invalid paths' leftovers on
   * disk go too. Returns the paths deleted.
   */
  async deleteSpecific (paths: string[]): Promise<string[]> {
    for (const p of paths) this.check(p)
    const body = new WireWriter().u64(OP_COLLECT_GARBAGE).u64(GC_DELETE_SPECIFIC).strings(paths)
      .bool(false) // ignore liveness: refused by the daemon anyway
      .u64Max() // max freed
      .u64(0).u64(0).u64(0) // obsolete
      .toBytes()
    return await this.request(body, async (r) => {
      const deleted = await r.readStrings('deleted paths')
      await r.readU64('bytes freed')
      await r.readU64('obsolete')
      return deleted
    })
  }

  /** Settles once the daemon is gone (its temporary roots released). */
  get gone (): Promise<void> { return this.transport.gone }

  /** Stops a build running on this connection when `signal` aborts; returns the unwatch. */
  watchAbort (signal: AbortSignal, graceMs: number): () => void { return this.transport.stopOnAbort(signal, graceMs) }

  close (): void { this.transport.destroy() }
}

async function readPathInfo (r: WireReader, path: string): Promise<PathInfo | null> {
  if (!(await r.readBool('path info valid'))) return null
  const deriver = await r.readString('deriver')
  const narHash = Hash.parse(await r.readString('narHash'), 'sha256')
  const references = (await r.readStrings('references')).sort()
  await r.readU64('registration time')
  const narSize = await r.readU64('narSize')
  await r.readBool('ultimate')
  const signatures = await r.readStrings('signatures')
  const ca = await r.readString('ca')
  const info: PathInfo = { path, narHash, narSize, references, signatures }
  if (deriver !== '') info.deriver = deriver
  if (ca !== '') info.ca = ca
  return info
}

/** Writes with backpressure; a gone daemon shows up as the next read's end of stream. */
async function write (output: Writable, bytes: Uint8Array): Promise<void> {
  if (output.destroyed || output.writableEnded) return
  if (output.write(bytes)) return
  const stop = new AbortController()
  try {
    await Promise.race([once(output, 'drain', { signal: stop.signal }), once(output, 'close', { signal: stop.signal })])
  } catch { /* closed or errored: the read that follows reports it */ } finally {
    stop.abort()
  }
}

/** Errors of the stream itself: the daemon (or its socket) went away. */
const GONE_CODES = new Set(['ERR_STREAM_PREMATURE_CLOSE', 'ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ENOENT', 'EACCES'])

function lost (err: unknown, transport: Transport): Error {
  if (err instanceof DaemonConnectionLost) return err
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string' && GONE_CODES.has(code)) {
    return new DaemonConnectionLost(`${transport.describe} (${transport.exitReason()}): ${(err as Error).message}`)
  }
  if (!(err instanceof DaemonProtocolError) || !/closed while reading/.test(err.message)) return err as Error
  const tail = transport.stderrTail()
  return new DaemonConnectionLost(`${transport.describe} (${transport.exitReason()}): ${err.message}${tail !== '' ? `; its stderr: ${tail}` : ''}`)
}
