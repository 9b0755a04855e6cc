// Serving and calling the request/response protocols (protocols/mesh/request-protocols.ts).
import { MAX_REPLY_BYTES, MAX_REQUEST_BYTES, REPLY_TIMEOUT_MS } from '../../protocols/mesh/constants.ts'
import type { RequestProtocol } from '../../protocols/mesh/request-protocols.ts'
import type { MeshNetwork } from './network.ts'

/** Answers each request with what `handler` returns; a request that fails validation aborts the stream. */
export async function serve<Req, Rep> (network: MeshNetwork, protocol: RequestProtocol<Req, Rep>, handler: (from: string, request: Req) => Rep | Promise<Rep>): Promise<void> {
  await network.handle(protocol.id, async (channel, peer) => {
    if (protocol.replyTimeoutMs !== undefined) keepOpen(channel.stream, protocol.replyTimeoutMs)
    const request = await channel.readMessage(protocol.validateRequest, { maxBytes: MAX_REQUEST_BYTES, timeoutMs: REPLY_TIMEOUT_MS })
    await channel.writeMessage(await handler(peer, request))
  })
}

/** 1. opens a stream, 2. writes the request, 3. reads and validates the reply, 4. closes. */
export async function call<Req, Rep> (network: MeshNetwork, peer: string, protocol: RequestProtocol<Req, Rep>, request: Req): Promise<Rep> {
  const channel = await network.open(peer, protocol.id)
  const timeoutMs = protocol.replyTimeoutMs ?? REPLY_TIMEOUT_MS
  if (protocol.replyTimeoutMs !== undefined) keepOpen(channel.stream, timeoutMs)
  try {
    await channel.writeMessage(request)
    return await channel.readMessage(protocol.validateReply, { maxBytes: MAX_REPLY_BYTES, timeoutMs })
  } catch (err) {
    channel.abort(err as Error)
    throw err
  } finally {
    await channel.close()
  }
}

/** A stream that waits for a long reply must not be closed as idle (libp2p's default is 120 s). */
function keepOpen (stream: { inactivityTimeout: number }, ms: number): void {
  stream.inactivityTimeout = Math.max(stream.inactivityTimeout, ms)
}
