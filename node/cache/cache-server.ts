// The shared cache over HTTP, read-only, in the layout Nix's http binary cache store reads:
// GET/HEAD /nix-cache-info, /<hashpart>.narinfo, /nar/<file>. Only names matching the layout's
// patterns reach the disk, so no request can name a file outside the cache. NARs are streamed
// from disk with backpressure (constant memory per request); idle or slow clients are cut off.
import { open } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { pipeline } from 'node:stream/promises'
import type { Logger } from '../log.ts'
import { NAR_NAME, NARINFO_NAME, NIX_CACHE_INFO, type BinaryCache } from './binary-cache.ts'

/** A connection with no byte read or written for this long is closed (a stalled download). */
export const CACHE_IDLE_TIMEOUT_MS = 60_000
/** Time a client has to send its request headers. */
export const CACHE_HEADERS_TIMEOUT_MS = 10_000
/** Time a client has to send a whole request (these have no body). */
export const CACHE_REQUEST_TIMEOUT_MS = 30_000
/** How long an idle keep-alive connection stays open between requests (Nix reuses them). */
export const CACHE_KEEP_ALIVE_TIMEOUT_MS = 5_000
export const CACHE_MAX_CONNECTIONS = 256

export interface CacheServerOptions {
  host: string
  /** 0 picks a free port. */
  port: number
  log?: Logger
  idleTimeoutMs?: number
}

export interface CacheServer {
  /** `http://host:port`, what Nix takes as a substituter. */
  url: string
  port: number
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
  const server: Server = createServer((req, res) => {
    handle(cache, req, res, log).catch((err: unknown) => {
      log?.warn(`${req.method ?? '?'} ${req.url ?? '?'}: ${(err as Error).message}`)
      if (!res.headersSent) reply(res, req, 500, TYPES.text, 'internal error\n')
      else res.destroy()
    })
  })
  server.headersTimeout = CACHE_HEADERS_TIMEOUT_MS
  server.requestTimeout = CACHE_REQUEST_TIMEOUT_MS
  server.keepAliveTimeout = CACHE_KEEP_ALIVE_TIMEOUT_MS
  server.maxConnections = CACHE_MAX_CONNECTIONS
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
