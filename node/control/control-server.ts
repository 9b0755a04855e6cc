// Serves the control API (control-protocol.ts) of a running node.
import { createServer, type Server, type Socket } from 'node:net'
import { chmod, rm } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import type { ControlledNode } from './controlled-node.ts'
import { BadRequest, validateControlRequest, type ControlReply } from './control-protocol.ts'
import type { Logger } from '../log.ts'

const MAX_REQUEST_BYTES = 16 * 1024 * 1024
/** At the end of a watch with logs, how long the logs being relayed may take to finish. */
const LOG_DRAIN_MS = 3_000
/** Unfollowed, a log is read whole within this long (a peer relaying it included). */
const LOG_READ_MS = 60_000
/** A client that has not sent its request line by then is dropped: it holds a socket for nothing. */
const REQUEST_TIMEOUT_MS = 30_000

export async function startControlServer (node: ControlledNode, socketPath: string, log: Logger): Promise<Server> {
  await rm(socketPath, { force: true })
  const server = createServer((socket) => { handle(node, socket, log) })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(socketPath, () => { server.off('error', reject); resolve() })
  })
  await chmod(socketPath, 0o600)
  return server
}

function send (socket: Socket, reply: ControlReply): void {
  if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`)
}

function handle (node: ControlledNode, socket: Socket, log: Logger): void {
  socket.on('error', () => {})
  const lines = createInterface({ input: socket, crlfDelay: Infinity })
  let handled = false
  let size = 0
  const waiting = setTimeout(() => { socket.destroy() }, REQUEST_TIMEOUT_MS)
  socket.on('close', () => { clearTimeout(waiting) })
  socket.on('data', (d: Buffer) => {
    size += d.byteLength
    // Only the request line counts: a watch connection stays open, but the client sends nothing more.
    if (size > MAX_REQUEST_BYTES) {
      send(socket, { ok: false, error: `request: more than ${MAX_REQUEST_BYTES} bytes`, errorName: 'BadRequest' })
      socket.destroy()
    }
  })
  lines.on('line', (line) => {
    if (handled) return
    handled = true
    clearTimeout(waiting)
    void answer(node, socket, line).catch((err: unknown) => {
      const e = err instanceof Error ? err : new Error(String(err))
      log.debug(`control request failed: ${e.name}: ${e.message}`)
      send(socket, { ok: false, error: e.message, errorName: e.name })
      socket.end()
    })
  })
}

async function answer (node: ControlledNode, socket: Socket, line: string): Promise<void> {
  const req = validateControlRequest(line)
  switch (req.op) {
    case 'submit': {
      const id = await node.submit(req.drvPaths, {
        priority: req.priority,
        ...(req.timeout !== undefined ? { timeout: req.timeout } : {}),
        ...(req.maxSilentTime !== undefined ? { maxSilentTime: req.maxSilentTime } : {}),
        ...(req.checkReproducible === true ? { checkReproducible: true } : {})
      })
      send(socket, { ok: true, id })
      socket.end()
      return
    }
    case 'status':
      send(socket, { ok: true, status: node.status() })
      socket.end()
      return
    case 'submission': {
      const report = node.submissionReport(req.id)
      if (report === undefined) throw Object.assign(new Error(`no submission ${req.id} on this node`), { name: 'UnknownSubmission' })
      send(socket, { ok: true, report })
      socket.end()
      return
    }
    case 'log':
      await answerLog(node, socket, req.path, req.follow === true)
      return
    case 'watch': {
      const first = node.submissionReport(req.id)
      if (first === undefined) throw Object.assign(new Error(`no submission ${req.id} on this node`), { name: 'UnknownSubmission' })
      send(socket, { ok: true, report: first })
      if (first.state !== 'running') { socket.end(); return }
      // submit -L: the builds' lines on the same connection, until the last report.
      const stopLogs = new AbortController()
      const cancelLogs = new AbortController()
      const logsDone = req.logs === true && node.watchLogs !== undefined
        ? node.watchLogs(req.id, (drvPath, lines) => { send(socket, { ok: true, logLines: { drvPath, lines } }) }, stopLogs.signal, cancelLogs.signal)
        : Promise.resolve()
      socket.on('close', () => { stopLogs.abort(); cancelLogs.abort() })
      // Changes come in bursts; send at most one report per 200 ms, and always the last.
      let pending: ReturnType<typeof setTimeout> | undefined
      const unwatch = node.watch(req.id, (report) => {
        if (report.state !== 'running') {
          if (pending !== undefined) clearTimeout(pending)
          unwatch()
          // The last lines of the last builds reach the client before the final report.
          stopLogs.abort()
          void within(logsDone, LOG_DRAIN_MS).then(() => {
            cancelLogs.abort()
            send(socket, { ok: true, report })
            socket.end()
          })
          return
        }
        if (pending !== undefined) return
        pending = setTimeout(() => {
          pending = undefined
          const now = node.submissionReport(req.id)
          if (now !== undefined && now.state === 'running') send(socket, { ok: true, report: now })
        }, 200)
      })
      socket.on('close', () => { unwatch(); if (pending !== undefined) clearTimeout(pending) })
      return
    }
    default:
      throw new BadRequest(`request.op: unknown ${JSON.stringify((req as { op?: unknown }).op)}`)
  }
}

/** Relays a build's log frames to the client; throws UnknownDerivation / NoBuildLog when there is none. */
async function answerLog (node: ControlledNode, socket: Socket, path: string, follow: boolean): Promise<void> {
  if (node.readLog === undefined || node.derivationOf === undefined) throw new Error('this node does not serve build logs')
  const drvPath = await node.derivationOf(path)
  if (drvPath === undefined) throw Object.assign(new Error(`${path}: no derivation known for it on this node`), { name: 'UnknownDerivation' })
  const controller = new AbortController()
  socket.on('close', () => { controller.abort() })
  const timer = follow ? undefined : setTimeout(() => { controller.abort() }, LOG_READ_MS)
  try {
    for await (const frame of node.readLog(drvPath, follow, controller.signal)) {
      if (socket.destroyed) return
      if (frame.type === 'lines') {
        send(socket, { ok: true, log: { lines: frame.lines, ...(frame.from !== undefined ? { from: frame.from } : {}) } })
        // Backpressure: a slow terminal holds the log's reading back, not the node's memory.
        if (socket.writableNeedDrain) await new Promise<void>((resolve) => { socket.once('drain', resolve); socket.once('close', resolve) })
        continue
      }
      if (!frame.found) throw Object.assign(new Error(`no build log of ${drvPath} on this node or its peers`), { name: 'NoBuildLog' })
      send(socket, {
        ok: true,
        logEnd: { found: true, outcome: frame.outcome, ...(frame.from !== undefined ? { from: frame.from } : {}), ...(frame.skippedBytes !== undefined ? { skippedBytes: frame.skippedBytes } : {}) }
      })
      socket.end()
      return
    }
    if (!socket.destroyed) throw new Error(`reading the log of ${drvPath} stopped early`)
  } finally {
    if (timer !== undefined) clearTimeout(timer)
    controller.abort()
  }
}

/** Waits for `p`, or `ms`, whichever is first. */
async function within (p: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined
  await Promise.race([p.catch(() => {}), new Promise<void>((resolve) => { timer = setTimeout(resolve, ms) })])
  clearTimeout(timer)
}
