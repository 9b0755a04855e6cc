// The log protocol, both ends (wire contract: protocols/mesh/request-protocols.ts LOG).
// 1. a reader writes {drvPath, follow, fromByte?};
// 2. the peer sends {type:'lines', lines} messages (an empty one as a heartbeat while following),
//    then one {type:'end', found, outcome, skippedBytes?} and closes.
import { LOG_FOLLOW_IDLE_MS, LOG_HEARTBEAT_MS, LOG_MESSAGE_BYTES, REPLY_TIMEOUT_MS } from '../../../protocols/mesh/constants.ts'
import { validateLogFrame, type LogFrame, type LogRequest } from '../../../protocols/mesh/messages.ts'
import { LOG } from '../../../protocols/mesh/request-protocols.ts'
import type { Logger } from '../../log.ts'
import type { MeshNetwork } from '../network.ts'
import { openRequest, serveStream, type RequestOptions, type Unserve } from '../rpc.ts'

/** Yields the frames of a log this node holds; ends with an end frame. */
export type LogSource = (request: LogRequest, signal: AbortSignal) => AsyncIterable<LogFrame>

/** A frame's JSON stays under the reader's limit: lines are bounded, and so is their number. */
const MAX_FRAME_BYTES = 2 * LOG_MESSAGE_BYTES + 64 * 1024

/** The builder's side: streams what `source` yields, with heartbeats while it is silent. */
export async function serveLog (network: MeshNetwork, source: LogSource, log: Logger): Promise<Unserve> {
  return await serveStream(network, LOG, async (from, req, channel) => {
    const controller = new AbortController()
    // The reader hung up: stop tailing the file for it.
    channel.stream.addEventListener('close', () => { controller.abort(new Error('reader closed the stream')) })
    log.debug(`${from} reads the log of ${req.drvPath}${req.follow ? ' (following)' : ''}`)
    let lastSent = Date.now()
    const heartbeat = setInterval(() => {
      if (Date.now() - lastSent < LOG_HEARTBEAT_MS) return
      lastSent = Date.now()
      void channel.writeMessage({ type: 'lines', lines: [] }, controller.signal).catch(() => {})
    }, LOG_HEARTBEAT_MS / 4)
    heartbeat.unref()
    try {
      for await (const frame of source(req, controller.signal)) {
        await channel.writeMessage(frame, controller.signal)
        lastSent = Date.now()
        if (frame.type === 'end') break
      }
      await channel.close()
    } finally {
      clearInterval(heartbeat)
      controller.abort(new Error('done'))
    }
  })
}

/**
 * The reader's side: yields the frames `peer` sends for `req`, the last an end frame. Not
 * following, each frame must come within the reply timeout; following, within the idle bound
 * (the builder sends heartbeats). Heartbeats are not yielded.
 */
export async function * requestLog (network: MeshNetwork, peer: string, req: LogRequest, options: RequestOptions = {}): AsyncGenerator<LogFrame> {
  const channel = await openRequest(network, peer, LOG, req, options)
  const timeoutMs = req.follow ? LOG_FOLLOW_IDLE_MS : REPLY_TIMEOUT_MS
  let ended = false
  try {
    for (;;) {
      const frame = await channel.readMessage(validateLogFrame, { maxBytes: MAX_FRAME_BYTES, timeoutMs, ...(options.signal !== undefined ? { signal: options.signal } : {}) })
      if (frame.type === 'lines' && frame.lines.length === 0) continue
      if (frame.type === 'end') ended = true
      yield frame
      if (ended) return
    }
  } catch (err) {
    channel.abort(err as Error)
    throw err
  } finally {
    if (ended) await channel.close()
    else channel.abort(new Error('reader stopped'))
  }
}
