// The shared cache over HTTP, read-only, in the layout Nix's http binary cache store reads:
// GET/HEAD /nix-cache-info, /<hashpart>.narinfo, /nar/<file>. Only names matching the layout's
// patterns reach the disk, so no request can name a file outside the cache. NARs are streamed
// from disk with backpressure (constant memory per request); idle or slow clients are cut off,
// and writes refused, by the bounded server (node/http/bounded-server.ts).
import { open } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { pipeline } from 'node:stream/promises'
import type { Logger } from '../log.ts'
import { reply, startBoundedServer, TEXT_TYPE, type ConnectionStats, type ServerListenOptions } from '../http/bounded-server.ts'
import { NAR_NAME, NARINFO_NAME, NIX_CACHE_INFO, type BinaryCache } from './binary-cache.ts'

/** Connections held at once, over all clients; beyond it the oldest one without a request goes. */
export const CACHE_MAX_CONNECTIONS = 256
/** Connections held at once from one address (Nix opens a few; a proxy or NAT shares one). */
export const CACHE_MAX_CONNECTIONS_PER_ADDRESS = 32

export interface CacheServerOptions extends ServerListenOptions {
  idleTimeoutMs?: number
  headersTimeoutMs?: number
}

export interface CacheServer {
  /** `http://host:port`, what Nix takes as a substituter. */
  url: string
  port: number
  /** Connections closed to admit others, or refused because every held one was busy. */
  connectionStats: () => ConnectionStats
  close: () => Promise<void>
}

const TYPES = {
  cacheInfo: 'text/x-nix-cache-info',
  narinfo: 'text/x-nix-narinfo',
  nar: 'application/x-nix-nar'
}

export async function startCacheServer (cache: BinaryCache, options: CacheServerOptions): Promise<CacheServer> {
  const log = options.log
  const server = await startBoundedServer(async (req, res) => { await handle(cache, req, res, log) }, {
    host: options.host,
    port: options.port,
    ...(log !== undefined ? { log } : {}),
    ...(options.idleTimeoutMs !== undefined ? { idleTimeoutMs: options.idleTimeoutMs } : {}),
    ...(options.headersTimeoutMs !== undefined ? { headersTimeoutMs: options.headersTimeoutMs } : {}),
    maxConnections: options.maxConnections ?? CACHE_MAX_CONNECTIONS,
    maxConnectionsPerAddress: options.maxConnectionsPerAddress ?? CACHE_MAX_CONNECTIONS_PER_ADDRESS,
    readOnlyReason: 'the binary cache is read-only'
  })
  log?.info(`serving ${cache.dir} at ${server.url}`)
  return server
}

async function handle (cache: BinaryCache, req: IncomingMessage, res: ServerResponse, log: Logger | undefined): Promise<void> {
  const method = req.method ?? ''
  // The raw target, not decoded: `%2e%2e` stays literal and matches no pattern.
  const target = (req.url ?? '').split('?')[0] ?? ''
  log?.debug(`${method} ${target}`)
  if (target === '/nix-cache-info') {
    reply(res, req, 200, TYPES.cacheInfo, NIX_CACHE_INFO)
    return
  }

  const narinfo = NARINFO_NAME.exec(target.slice(1))
  if (target.startsWith('/') && narinfo != null) {
    const text = await cache.narinfoText(narinfo[1] ?? '')
    cache.recordLookup(text !== undefined)
    if (text === undefined) reply(res, req, 404, TEXT_TYPE, 'no such path in this cache\n')
    else reply(res, req, 200, TYPES.narinfo, text)
    return
  }

  if (target.startsWith('/nar/') && NAR_NAME.test(target.slice(5))) {
    const file = await cache.narFile(target.slice(5))
    if (file === undefined) {
      reply(res, req, 404, TEXT_TYPE, 'no such NAR in this cache\n')
      return
    }
    await sendFile(file.path, req, res)
    return
  }

  reply(res, req, 404, TEXT_TYPE, 'not found\n')
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
