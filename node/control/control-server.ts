// Serves the control API (control-protocol.ts) of a running node.
import { createServer, type Server, type Socket } from 'node:net'
import { chmod, rm } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import type { MeshNode } from '../mesh/mesh-node.ts'
import type { ControlReply, ControlRequest } from './control-protocol.ts'
import type { Logger } from '../log.ts'

const MAX_REQUEST_BYTES = 16 * 1024 * 1024

export async function startControlServer (node: MeshNode, socketPath: string, log: Logger): Promise<Server> {
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

function handle (node: MeshNode, socket: Socket, log: Logger): void {
  socket.on('error', () => {})
  const lines = createInterface({ input: socket, crlfDelay: Infinity })
  let handled = false
  let size = 0
  socket.on('data', (d: Buffer) => {
    size += d.byteLength
    if (size > MAX_REQUEST_BYTES) socket.destroy()
  })
  lines.on('line', (line) => {
    if (handled) return
    handled = true
    void answer(node, socket, line).catch((err: unknown) => {
      const e = err as Error
      log.debug(`control request failed: ${e.message}`)
      send(socket, { ok: false, error: e.message, errorName: e.name })
      socket.end()
    })
  })
}

async function answer (node: MeshNode, socket: Socket, line: string): Promise<void> {
  const req = JSON.parse(line) as ControlRequest
  switch (req.op) {
    case 'submit': {
      const id = await node.submit(req.drvPaths, {
        priority: req.priority,
        ...(req.timeout !== undefined ? { timeout: req.timeout } : {}),
        ...(req.maxSilentTime !== undefined ? { maxSilentTime: req.maxSilentTime } : {})
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
    case 'watch': {
      const first = node.submissionReport(req.id)
      if (first === undefined) throw Object.assign(new Error(`no submission ${req.id} on this node`), { name: 'UnknownSubmission' })
      send(socket, { ok: true, report: first })
      if (first.state !== 'running') { socket.end(); return }
      // Changes come in bursts; send at most one report per 200 ms, and always the last.
      let pending: ReturnType<typeof setTimeout> | undefined
      const unwatch = node.watch(req.id, (report) => {
        if (report.state !== 'running') {
          if (pending !== undefined) clearTimeout(pending)
          send(socket, { ok: true, report })
          unwatch()
          socket.end()
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
      throw Object.assign(new Error(`unknown control request ${JSON.stringify((req as { op?: unknown }).op)}`), { name: 'BadRequest' })
  }
}
