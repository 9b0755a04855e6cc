// Serving and requesting the mesh's stream protocols (protocols/mesh/request-protocols.ts). Every
// handler is registered through serveStream() (serve() is its one-reply form), which reads the
// request within its size limit and timeout; the network applies the inbound stream limit and the
// per-peer rate (network.ts handle()). Every request is opened through openRequest() (request()
// is its one-reply form), which waits no longer than the caller's signal or its own timeout.
import { MAX_REPLY_BYTES, MAX_REQUEST_BYTES, REPLY_TIMEOUT_MS } from '../../protocols/mesh/constants.ts'
import type { RequestProtocol, StreamProtocol } from '../../protocols/mesh/request-protocols.ts'
import { TimeoutError, type StreamChannel } from '../../protocols/mesh/stream-channel.ts'
import type { MeshNetwork } from './network.ts'

/** Removes a handler registered with serve() or serveStream(). */
export type Unserve = () => Promise<void>

export interface RequestOptions {
  /** Ends the wait early; the protocol's reply timeout applies whether or not one is given. */
  signal?: AbortSignal
}

/**
 * Calls `handler` with each valid request and the stream to answer on; a request that fails
 * validation, or a handler that throws, aborts the stream. Returns the unregistering function.
 */
export async function serveStream<Req> (network: MeshNetwork, protocol: StreamProtocol<Req>, handler: (from: string, request: Req, channel: StreamChannel) => Promise<void>): Promise<Unserve> {
  await network.handle(protocol.id, async (channel, peer) => {
    if (protocol.replyTimeoutMs !== undefined) keepOpen(channel.stream, protocol.replyTimeoutMs)
    const request = await channel.readMessage(protocol.validateRequest, { maxBytes: MAX_REQUEST_BYTES, timeoutMs: REPLY_TIMEOUT_MS })
    await handler(peer, request, channel)
  })
  return async () => { await network.unhandle(protocol.id) }
}

/** Answers each request with what `handler` returns. */
export async function serve<Req, Rep> (network: MeshNetwork, protocol: RequestProtocol<Req, Rep>, handler: (from: string, request: Req) => Rep | Promise<Rep>): Promise<Unserve> {
  return await serveStream(network, protocol, async (from, req, channel) => {
    await channel.writeMessage(await handler(from, req))
  })
}

/**
 * 1. opens a stream (within the dial timeout unless `signal` is given), 2. writes the request.
 * Returns the open stream; on an error it is aborted.
 */
export async function openRequest<Req> (network: MeshNetwork, peer: string, protocol: StreamProtocol<Req>, message: Req, options: RequestOptions = {}): Promise<StreamChannel> {
  const channel = await network.open(peer, protocol.id, options.signal)
  if (protocol.replyTimeoutMs !== undefined) keepOpen(channel.stream, protocol.replyTimeoutMs)
  try {
    await withTimeout(protocol.replyTimeoutMs ?? REPLY_TIMEOUT_MS, options.signal, async (signal) => { await channel.writeMessage(message, signal) })
  } catch (err) {
    channel.abort(err as Error)
    throw err
  }
  return channel
}

/**
 * 1.–2. as openRequest, 3. reads and validates the reply within the protocol's reply timeout,
 * 4. closes (aborts on any error).
 */
export async function request<Req, Rep> (network: MeshNetwork, peer: string, protocol: RequestProtocol<Req, Rep>, message: Req, options: RequestOptions = {}): Promise<Rep> {
  const channel = await openRequest(network, peer, protocol, message, options)
  const timeoutMs = protocol.replyTimeoutMs ?? REPLY_TIMEOUT_MS
  try {
    return await channel.readMessage(protocol.validateReply, { maxBytes: MAX_REPLY_BYTES, timeoutMs, ...(options.signal !== undefined ? { signal: options.signal } : {}) })
  } catch (err) {
    channel.abort(err as Error)
    throw err
  } finally {
    await channel.close()
  }
}

/** The earlier name of request(), kept for the tests that play a peer. */
export const call = request

/** Runs `fn` with a signal that aborts after `ms` or with `outer`; the timer is cleared after. */
async function withTimeout<T> (ms: number, outer: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController()
  const timer = setTimeout(() => { controller.abort(new TimeoutError(`no progress within ${ms} ms`)) }, ms)
  timer.unref()
  const onAbort = (): void => { controller.abort(outer?.reason) }
  if (outer?.aborted === true) onAbort()
  outer?.addEventListener('abort', onAbort, { once: true })
  try {
    return await fn(controller.signal)
  } finally {
    clearTimeout(timer)
    outer?.removeEventListener('abort', onAbort)
  }
}

/** A stream that waits for a long reply must not be closed as idle (libp2p's default is 120 s). */
function keepOpen (stream: { inactivityTimeout: number }, ms: number): void {
  stream.inactivityTimeout = Math.max(stream.inactivityTimeout, ms)
}
