// A read-only HTTP server that slow or hostile clients cannot lock out: the binary cache and the
// node's observation listener (metrics) both serve through it. GET and HEAD only, no request
// body, and every connection bounded in time and number.
//
// Connections are held so that slow clients cannot lock out real ones: a client has a few
// seconds to send its headers (one that sends nothing at all too), each address may hold only
// so many connections, and when a limit is reached the oldest connection with no request in
// progress (never sent one, or idle between keep-alive requests) is closed to admit the new
// one. A new connection is refused only when every held one is busy serving a request.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { Logger } from '../log.ts'

/** A connection with no byte read or written for this long is closed (a stalled download). */
export const HTTP_IDLE_TIMEOUT_MS = 60_000
/**
 * Time a client has to send its request headers, counted from when it connects (Nix sends them
 * at once). Node checks it every HTTP_CONNECTIONS_CHECKING_INTERVAL_MS (its default, 30 s,
 * let half-open connections live that long); a client that sends nothing is timed here.
 */
export const HTTP_HEADERS_TIMEOUT_MS = 5_000
export const HTTP_CONNECTIONS_CHECKING_INTERVAL_MS = 1_000
/** Time a client has to send a whole request (these have no body). */
export const HTTP_REQUEST_TIMEOUT_MS = 30_000
/** How long an idle keep-alive connection stays open between requests (Nix reuses them). */
export const HTTP_KEEP_ALIVE_TIMEOUT_MS = 5_000
/** Request line and headers together; a GET needs far less. Beyond it Node answers 431. */
export const HTTP_MAX_HEADER_BYTES = 16 * 1024

export const TEXT_TYPE = 'text/plain; charset=utf-8'

/** Where a server built on this one listens, and (defaults of its own) how many it holds. */
export interface ServerListenOptions {
  host: string
  /** 0 picks a free port. */
  port: number
  log?: Logger
  maxConnections?: number
  maxConnectionsPerAddress?: number
}

export interface BoundedServerOptions {
  host: string
  port: number
  log?: Logger
  idleTimeoutMs?: number
  headersTimeoutMs?: number
  /** Connections held at once, over all clients; beyond it the oldest one without a request goes. */
  maxConnections: number
  /** Connections held at once from one address. */
  maxConnectionsPerAddress: number
  /** Said in the 405 answer to a write. */
  readOnlyReason: string
}

export interface BoundedServer {
  /** `http://host:port`, IPv6 hosts in brackets. */
  url: string
  port: number
  /** Connections closed to admit others, or refused because every held one was busy. */
  connectionStats: () => ConnectionStats
  close: () => Promise<void>
}

export interface ConnectionStats { open: number, evicted: number, refused: number, headerTimeouts: number }

/** Answers one GET or HEAD request with no body; a rejection becomes a 500. */
export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => Promise<void>

export async function startBoundedServer (handler: RequestHandler, options: BoundedServerOptions): Promise<BoundedServer> {
  const log = options.log
  const headersTimeoutMs = options.headersTimeoutMs ?? HTTP_HEADERS_TIMEOUT_MS
  const server: Server = createServer({ connectionsCheckingInterval: HTTP_CONNECTIONS_CHECKING_INTERVAL_MS, maxHeaderSize: HTTP_MAX_HEADER_BYTES }, (req, res) => {
    if (refused(req, res, options.readOnlyReason)) return
    handler(req, res).catch((err: unknown) => {
      log?.warn(`${req.method ?? '?'} ${req.url ?? '?'}: ${(err as Error).message}`)
      if (!res.headersSent) reply(res, req, 500, TEXT_TYPE, 'internal error\n')
      else res.destroy()
    })
  })
  server.headersTimeout = headersTimeoutMs
  server.requestTimeout = HTTP_REQUEST_TIMEOUT_MS
  server.keepAliveTimeout = HTTP_KEEP_ALIVE_TIMEOUT_MS
  // Not server.maxConnections: it refuses the newest connection, which is how 256 half-open
  // ones locked Nix out of the cache. The pool below closes the oldest idle one instead.
  const pool = new ConnectionPool(options.maxConnections, options.maxConnectionsPerAddress, headersTimeoutMs)
  server.on('connection', (socket: Socket) => { pool.admit(socket) })
  server.on('request', (req: IncomingMessage, res: ServerResponse) => { pool.busy(req.socket, res) })
  // Without a 'timeout' listener Node destroys the socket: a client that stops reading holds a
  // file descriptor for this long at most.
  server.setTimeout(options.idleTimeoutMs ?? HTTP_IDLE_TIMEOUT_MS)

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port, options.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const { port } = server.address() as AddressInfo
  const host = options.host.includes(':') ? `[${options.host}]` : options.host
  return {
    url: `http://${host}:${port}`,
    port,
    connectionStats: () => pool.stats(),
    close: async () => {
      await new Promise<void>(resolve => {
        server.close(() => { resolve() })
        server.closeAllConnections()
      })
    }
  }
}

/**
 * Answers a write (405) or a request with a body (413) and says so; true when it did. The body
 * is not read: the connection is closed after the answer rather than drained.
 */
function refused (req: IncomingMessage, res: ServerResponse, readOnlyReason: string): boolean {
  const method = req.method ?? ''
  if (method !== 'GET' && method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD')
    res.setHeader('Connection', 'close')
    reply(res, req, 405, TEXT_TYPE, `${readOnlyReason}\n`)
    return true
  }
  const length = req.headers['content-length']
  if (req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) {
    res.setHeader('Connection', 'close')
    reply(res, req, 413, TEXT_TYPE, 'requests here carry no body\n')
    return true
  }
  return false
}

/** Writes a whole answer with its length; HEAD gets the headers only. */
export function reply (res: ServerResponse, req: IncomingMessage, status: number, type: string, body: string): void {
  const bytes = Buffer.from(body, 'utf8')
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': bytes.length })
  res.end(req.method === 'HEAD' ? undefined : bytes)
}

type ConnState = 'fresh' | 'busy' | 'idle'
interface Held { address: string, state: ConnState, since: number, timer?: NodeJS.Timeout }

/**
 * The connections the server holds, by address, in arrival order. A new one that would pass a
 * limit closes the oldest held connection of that address (or of all, for the global limit)
 * that has no request in progress, those that never sent a request first.
 */
class ConnectionPool {
  private readonly held = new Map<Socket, Held>()
  private readonly perAddress = new Map<string, number>()
  private readonly counters = { evicted: 0, refused: 0, headerTimeouts: 0 }
  private readonly max: number
  private readonly maxPerAddress: number
  private readonly headersTimeoutMs: number

  constructor (max: number, maxPerAddress: number, headersTimeoutMs: number) {
    this.max = max
    this.maxPerAddress = maxPerAddress
    this.headersTimeoutMs = headersTimeoutMs
  }

  admit (socket: Socket): void {
    const address = socket.remoteAddress ?? '?'
    if ((this.perAddress.get(address) ?? 0) >= this.maxPerAddress && !this.evict(address)) { this.refuse(socket); return }
    if (this.held.size >= this.max && !this.evict(undefined)) { this.refuse(socket); return }
    const entry: Held = { address, state: 'fresh', since: Date.now() }
    // Node's headersTimeout starts with the first byte: time the silent ones here.
    entry.timer = setTimeout(() => {
      if (entry.state !== 'fresh') return
      this.counters.headerTimeouts++
      socket.destroy()
    }, this.headersTimeoutMs)
    entry.timer.unref()
    this.held.set(socket, entry)
    this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1)
    socket.once('close', () => { this.forget(socket) })
  }

  busy (socket: Socket, res: ServerResponse): void {
    const entry = this.held.get(socket)
    if (entry === undefined) return
    entry.state = 'busy'
    clearTimeout(entry.timer)
    const done = (): void => { if (entry.state === 'busy') { entry.state = 'idle'; entry.since = Date.now() } }
    res.once('finish', done)
    res.once('close', done)
  }

  stats (): ConnectionStats {
    return { open: this.held.size, ...this.counters }
  }

  /** Closes the oldest fresh, else the oldest idle, connection (of `address` if given); false if none. */
  private evict (address: string | undefined): boolean {
    let victim: [Socket, Held] | undefined
    for (const e of this.held) {
      if (address !== undefined && e[1].address !== address) continue
      if (e[1].state === 'fresh') { victim = e; break }
      if (e[1].state === 'idle' && (victim === undefined || e[1].since < victim[1].since)) victim = e
    }
    if (victim === undefined) return false
    this.counters.evicted++
    this.forget(victim[0])
    victim[0].destroy()
    return true
  }

  private refuse (socket: Socket): void {
    this.counters.refused++
    socket.destroy()
  }

  private forget (socket: Socket): void {
    const entry = this.held.get(socket)
    if (entry === undefined) return
    clearTimeout(entry.timer)
    this.held.delete(socket)
    const n = (this.perAddress.get(entry.address) ?? 1) - 1
    if (n <= 0) this.perAddress.delete(entry.address)
    else this.perAddress.set(entry.address, n)
  }
}
