// The shared cache over HTTP, read-only, in the layout Nix's http binary cache store reads:
// GET/HEAD /nix-cache-info, /<hashpart>.narinfo, /nar/<file>. Only names matching the layout's
// patterns reach the disk, so no request can name a file outside the cache. NARs are streamed
// from disk with backpressure (constant memory per request); idle or slow clients are cut off.
//
// Connections are held so that slow clients cannot lock out real ones: a client has a few
// seconds to send its headers (one that sends nothing at all too), each address may hold only
// so many connections, and when a limit is reached the oldest connection with no request in
// progress (never sent one, or idle between keep-alive requests) is closed to admit the new
// one. A new connection is refused only when every held one is busy serving a request.
import { open } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { pipeline } from 'node:stream/promises'
import type { Logger } from '../log.ts'
import { NAR_NAME, NARINFO_NAME, NIX_CACHE_INFO, type BinaryCache } from './binary-cache.ts'

/** A connection with no byte read or written for this long is closed (a stalled download). */
export const CACHE_IDLE_TIMEOUT_MS = 60_000
/**
 * Time a client has to send its request headers, counted from when it connects (Nix sends them
 * at once). Node checks it every CACHE_CONNECTIONS_CHECKING_INTERVAL_MS (its default, 30 s,
 * let half-open connections live that long); a client that sends nothing is timed here.
 */
export const CACHE_HEADERS_TIMEOUT_MS = 5_000
export const CACHE_CONNECTIONS_CHECKING_INTERVAL_MS = 1_000
/** Time a client has to send a whole request (these have no body). */
export const CACHE_REQUEST_TIMEOUT_MS = 30_000
/** How long an idle keep-alive connection stays open between requests (Nix reuses them). */
export const CACHE_KEEP_ALIVE_TIMEOUT_MS = 5_000
/** Connections held at once, over all clients; beyond it the oldest one without a request goes. */
export const CACHE_MAX_CONNECTIONS = 256
/** Connections held at once from one address (Nix opens a few; a proxy or NAT shares one). */
export const CACHE_MAX_CONNECTIONS_PER_ADDRESS = 32

export interface CacheServerOptions {
  host: string
  /** 0 picks a free port. */
  port: number
  log?: Logger
  idleTimeoutMs?: number
  headersTimeoutMs?: number
  maxConnections?: number
  maxConnectionsPerAddress?: number
}

export interface CacheServer {
  /** `http://host:port`, what Nix takes as a substituter. */
  url: string
  port: number
  /** Connections closed to admit others, or refused because every held one was busy. */
  connectionStats: () => { open: number, evicted: number, refused: number, headerTimeouts: number }
  close: () => Promise<void>
}

const TYPES = {
  cacheInfo: 'text/x-nix-cache-info',
  narinfo: 'text/x-nix-narinfo',
  nar: 'application/x-nix-nar',
  text: 'text/plain; charset=utf-8'
}

export async function startCacheServer (cache: BinaryCache, options: CacheServerOptions): Promise<CacheServer> {
  const log = options.log
  const headersTimeoutMs = options.headersTimeoutMs ?? CACHE_HEADERS_TIMEOUT_MS
  const server: Server = createServer({ connectionsCheckingInterval: CACHE_CONNECTIONS_CHECKING_INTERVAL_MS }, (req, res) => {
    handle(cache, req, res, log).catch((err: unknown) => {
      log?.warn(`${req.method ?? '?'} ${req.url ?? '?'}: ${(err as Error).message}`)
      if (!res.headersSent) reply(res, req, 500, TYPES.text, 'internal error\n')
      else res.destroy()
    })
  })
  server.headersTimeout = headersTimeoutMs
  server.requestTimeout = CACHE_REQUEST_TIMEOUT_MS
  server.keepAliveTimeout = CACHE_KEEP_ALIVE_TIMEOUT_MS
  // Not server.maxConnections: it refuses the newest connection, which is how 256 half-open
  // ones locked Nix out. The pool below closes the oldest idle one instead.
  const pool = new ConnectionPool(options.maxConnections ?? CACHE_MAX_CONNECTIONS, options.maxConnectionsPerAddress ?? CACHE_MAX_CONNECTIONS_PER_ADDRESS, headersTimeoutMs)
  server.on('connection', (socket: Socket) => { pool.admit(socket) })
  server.on('request', (req: IncomingMessage, res: ServerResponse) => { pool.busy(req.socket, res) })
  // Without a 'timeout' listener Node destroys the socket: a client that stops reading a NAR
  // holds a file descriptor for this long at most.
  server.setTimeout(options.idleTimeoutMs ?? CACHE_IDLE_TIMEOUT_MS)

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port, options.host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const { port } = server.address() as AddressInfo
  const host = options.host.includes(':') ? `[${options.host}]` : options.host
  const url = `http://${host}:${port}`
  log?.info(`serving ${cache.dir} at ${url}`)
  return {
    url,
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

async function handle (cache: BinaryCache, req: IncomingMessage, res: ServerResponse, log: Logger | undefined): Promise<void> {
  const method = req.method ?? ''
  // The raw target, not decoded: `%2e%2e` stays literal and matches no pattern.
  const target = (req.url ?? '').split('?')[0] ?? ''
  log?.debug(`${method} ${target}`)
  if (method !== 'GET' && method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD')
    // Whatever body came with it is not read; close rather than drain it.
    res.setHeader('Connection', 'close')
    reply(res, req, 405, TYPES.text, 'the binary cache is read-only\n')
    return
  }

  if (target === '/nix-cache-info') {
    reply(res, req, 200, TYPES.cacheInfo, NIX_CACHE_INFO)
    return
  }

  const narinfo = NARINFO_NAME.exec(target.slice(1))
  if (target.startsWith('/') && narinfo != null) {
    const text = await cache.narinfoText(narinfo[1] ?? '')
    cache.recordLookup(text !== undefined)
    if (text === undefined) reply(res, req, 404, TYPES.text, 'no such path in this cache\n')
    else reply(res, req, 200, TYPES.narinfo, text)
    return
  }

  if (target.startsWith('/nar/') && NAR_NAME.test(target.slice(5))) {
    const file = await cache.narFile(target.slice(5))
    if (file === undefined) {
      reply(res, req, 404, TYPES.text, 'no such NAR in this cache\n')
      return
    }
    await sendFile(file.path, req, res)
    return
  }

  reply(res, req, 404, TYPES.text, 'not found\n')
}

/** Streams a file with its length; the socket's backpressure paces the reads. */
async function sendFile (path: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const fh = await open(path, 'r')
  try {
    const { size } = await fh.stat()
    res.writeHead(200, { 'Content-Type': TYPES.nar, 'Content-Length': size })
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    // A client that disconnects mid-download ends the pipeline with ERR_STREAM_PREMATURE_CLOSE.
    await pipeline(fh.createReadStream({ autoClose: false, highWaterMark: 256 * 1024 }), res).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE') throw err
    })
  } finally {
    await fh.close()
  }
}

function reply (res: ServerResponse, req: IncomingMessage, status: number, type: string, body: string): void {
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

  stats (): { open: number, evicted: number, refused: number, headerTimeouts: number } {
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
