// Talks to a running node over its control socket.
import { connect } from 'node:net'
import { createInterface } from 'node:readline'
import { join } from 'node:path'
import { CONTROL_SOCKET, type ControlReply, type ControlRequest } from './control-protocol.ts'

/** The node is not running, or its socket is not where the data directory says. */
export class NodeUnavailable extends Error {
  override name = 'NodeUnavailable'
}

/** The node answered with an error. */
export class ControlError extends Error {
  override name = 'ControlError'
  readonly remoteName: string
  constructor (message: string, remoteName: string) {
    super(message)
    this.remoteName = remoteName
  }
}

export function socketPath (dataDir: string): string {
  return join(dataDir, CONTROL_SOCKET)
}

/** Sends one request and yields every reply line until the node closes the connection. */
export async function * controlRequest (dataDir: string, request: ControlRequest): AsyncGenerator<ControlReply & { ok: true }> {
  const path = socketPath(dataDir)
  const socket = connect(path)
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', (err: NodeJS.ErrnoException) => {
      reject(new NodeUnavailable(`no meshbuild node answers at ${path} (${err.code ?? err.message}); start one with 'meshbuild join'`))
    })
  })
  socket.on('error', () => {})
  socket.write(`${JSON.stringify(request)}\n`)
  const lines = createInterface({ input: socket, crlfDelay: Infinity })
  try {
    for await (const line of lines) {
      const reply = JSON.parse(line) as ControlReply
      if (!reply.ok) throw new ControlError(reply.error, reply.errorName)
      yield reply
    }
  } finally {
    socket.destroy()
  }
}

/** Sends one request and returns the single reply. */
export async function controlCall (dataDir: string, request: ControlRequest): Promise<ControlReply & { ok: true }> {
  for await (const reply of controlRequest(dataDir, request)) return reply
  throw new NodeUnavailable(`the node at ${socketPath(dataDir)} closed the connection without answering`)
}
