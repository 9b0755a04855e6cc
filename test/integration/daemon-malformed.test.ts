// DaemonStore against a daemon that misbehaves: a fake server on a real Unix socket (no Nix),
// speaking the handshake right or wrong, then answering a validity query with garbage or not at
// all. Every case fails with an error naming what was wrong, within a bound, and never hangs.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type Server, type Socket } from 'node:net'
import { join } from 'node:path'
import { WireWriter, STDERR_LAST, WORKER_MAGIC_2, PROTOCOL_VERSION } from '../../protocols/nix/daemon-wire.ts'
import { DaemonStore } from '../../node/nix/daemon-store.ts'
import { tempDir } from '../helpers/temp-dir.ts'
import { within } from '../helpers/wait.ts'

const PATH = '/nix/store/00000000000000000000000000000000-x'
const BOUND_MS = 10_000
/** Bytes the client sends in the handshake: its magic, then version, affinity and reserve-space. */
const CLIENT_MAGIC_BYTES = 8
const CLIENT_HELLO_BYTES = 24

type Behaviour = (socket: Socket, received: () => Buffer) => void

/** After a correct handshake, `afterHandshake` decides what the first request gets. */
function handshakeThen (afterHandshake: (socket: Socket) => void): Behaviour {
  return (socket, received) => {
    let stage = 0
    socket.on('data', () => {
      const have = received().length
      if (stage === 0 && have >= CLIENT_MAGIC_BYTES) {
        stage = 1
        socket.write(new WireWriter().u64(WORKER_MAGIC_2).u64(PROTOCOL_VERSION).toBytes())
      }
      if (stage === 1 && have >= CLIENT_MAGIC_BYTES + CLIENT_HELLO_BYTES) {
        stage = 2
        socket.write(new WireWriter().string('fake 2.8.0').u64(STDERR_LAST).toBytes())
      } else if (stage === 2 && have > CLIENT_MAGIC_BYTES + CLIENT_HELLO_BYTES) {
        stage = 3
        afterHandshake(socket)
      }
    })
  }
}

const BEHAVIOURS: Record<string, Behaviour> = {
  'wrong magic': (socket) => { socket.once('data', () => socket.write(new WireWriter().u64(0x12345678).u64(PROTOCOL_VERSION).toBytes())) },
  'closed mid-handshake': (socket) => { socket.once('data', () => { socket.end(new WireWriter().u64(WORKER_MAGIC_2).toBytes().slice(0, 5)) }) },
  'silent from the start': () => {},
  'oversized list': handshakeThen(s => s.write(new WireWriter().u64(STDERR_LAST).u64(2 ** 40).toBytes())),
  'truncated reply': handshakeThen(s => s.end(new WireWriter().u64(STDERR_LAST).u64(1).u64(PATH.length).toBytes())),
  'unknown stderr code': handshakeThen(s => s.write(new WireWriter().u64(0x1234).toBytes())),
  'silent after the handshake': handshakeThen(() => {})
}

describe('DaemonStore against a misbehaving daemon socket', () => {
  let dir: string
  let cleanup: () => Promise<void>
  const servers: Server[] = []
  const sockets = new Set<Socket>()

  before(async () => { ({ dir, cleanup } = await tempDir()) })
  after(async () => {
    for (const s of sockets) s.destroy()
    await Promise.all(servers.map(async s => { await new Promise(resolve => s.close(resolve)) }))
    await cleanup()
  })

  async function fakeDaemon (name: string, behaviour: Behaviour): Promise<string> {
    const path = join(dir, `${name.replace(/\W+/g, '-')}.sock`)
    const server = createServer(socket => {
      sockets.add(socket)
      const chunks: Buffer[] = []
      socket.on('data', (d: Buffer) => { chunks.push(d) })
      socket.on('error', () => {})
      behaviour(socket, () => Buffer.concat(chunks))
    })
    servers.push(server)
    await new Promise<void>(resolve => server.listen(path, resolve))
    return path
  }

  const expected: Record<string, { name: string, message: RegExp }> = {
    'wrong magic': { name: 'DaemonProtocolError', message: /server magic: expected 0x6478696f, got 0x12345678/ },
    'closed mid-handshake': { name: 'DaemonConnectionLost', message: /closed while reading server magic/ },
    'silent from the start': { name: 'DaemonConnectionLost', message: /did not complete the handshake within 300 ms/ },
    'oversized list': { name: 'DaemonProtocolError', message: /valid paths: count 1099511627776 exceeds the limit/ },
    'truncated reply': { name: 'DaemonConnectionLost', message: /closed while reading valid paths\[0\]/ },
    'unknown stderr code': { name: 'DaemonProtocolError', message: /stderr message code: unknown code 0x1234/ },
    'silent after the handshake': { name: 'DaemonTimeout', message: /did not answer the validity query within 300 ms/ }
  }

  for (const [name, behaviour] of Object.entries(BEHAVIOURS)) {
    const want = expected[name] ?? { name: 'no expectation written', message: /^$/ }
    it(`${name}: ${want.name}, naming what was wrong`, async () => {
      const socketPath = await fakeDaemon(name, behaviour)
      const store = new DaemonStore({ socketPath, queryTimeoutMs: 300, openTimeoutMs: 300 })
      try {
        await assert.rejects(within(store.isValid([PATH]), BOUND_MS, `isValid against a daemon that is ${name}`), want)
        // A broken connection is not reused: the next request opens another and fails the same way.
        await assert.rejects(within(store.isValid([PATH]), BOUND_MS, 'the next isValid'), want)
        assert.ok(store.stats.opened <= 2)
      } finally {
        store.close()
      }
    })
  }

  it('a socket nobody listens on: DaemonConnectionLost naming the socket', async () => {
    const store = new DaemonStore({ socketPath: join(dir, 'nobody.sock') })
    try {
      await assert.rejects(within(store.isValid([PATH]), BOUND_MS, 'isValid with no daemon'),
        { name: 'DaemonConnectionLost', message: /the Nix daemon at .*nobody\.sock .*ENOENT/ })
    } finally {
      store.close()
    }
  })
})
