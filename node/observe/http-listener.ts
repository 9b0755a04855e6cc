// The node's local HTTP listener (`join --http-listen`): read-only, for people and Prometheus
// watching this node. GET/HEAD / (the live status page, status-page.ts), /events (its feed,
// events.ts), /metrics (Prometheus' text format) and /healthz; anything else is 404, a write
// 405, a request with a body 413. It is bounded like the binary cache
// (node/http/bounded-server.ts), with fewer connections: scrapers and a browser or two.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { reply, startBoundedServer, TEXT_TYPE, type BoundedServer, type ServerListenOptions } from '../http/bounded-server.ts'
import { StatusEvents, type StatusPageSource } from './events.ts'
import type { NodeMetrics } from './metrics.ts'
import { HTML_TYPE, STATUS_PAGE_HEADERS, STATUS_PAGE_HTML } from './status-page.ts'

/** Where the listener binds when --http-listen names a port only: this machine alone. */
export const HTTP_LISTEN_DEFAULT_HOST = '127.0.0.1'
/** Connections held at once, over all clients. */
export const HTTP_LISTEN_MAX_CONNECTIONS = 64
/** Connections held at once from one address. */
export const HTTP_LISTEN_MAX_CONNECTIONS_PER_ADDRESS = 16

export type HttpListener = BoundedServer

/** Without a page source (a node's status), `/` and `/events` are 404. */
export async function startHttpListener (metrics: NodeMetrics, options: ServerListenOptions, page?: StatusPageSource): Promise<HttpListener> {
  const log = options.log
  const events = page !== undefined ? new StatusEvents(page) : undefined
  const server = await startBoundedServer(async (req, res) => { await handle(metrics, events, req, res) }, {
    host: options.host,
    port: options.port,
    ...(log !== undefined ? { log } : {}),
    maxConnections: options.maxConnections ?? HTTP_LISTEN_MAX_CONNECTIONS,
    maxConnectionsPerAddress: options.maxConnectionsPerAddress ?? HTTP_LISTEN_MAX_CONNECTIONS_PER_ADDRESS,
    readOnlyReason: 'this listener is read-only'
  })
  return { ...server, close: async () => { events?.close(); await server.close() } }
}

async function handle (metrics: NodeMetrics, events: StatusEvents | undefined, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const target = (req.url ?? '').split('?')[0] ?? ''
  if (events !== undefined && target === '/') {
    for (const [k, v] of Object.entries(STATUS_PAGE_HEADERS)) res.setHeader(k, v)
    reply(res, req, 200, HTML_TYPE, STATUS_PAGE_HTML)
    return
  }
  if (events !== undefined && target === '/events') {
    events.serve(req, res)
    return
  }
  if (target === '/metrics') {
    const { contentType, text } = await metrics.scrape()
    reply(res, req, 200, contentType, text)
    return
  }
  if (target === '/healthz') {
    reply(res, req, 200, TEXT_TYPE, 'ok\n')
    return
  }
  reply(res, req, 404, TEXT_TYPE, `not found: this node serves ${events !== undefined ? '/ (its status page), /events, ' : ''}/metrics and /healthz\n`)
}
