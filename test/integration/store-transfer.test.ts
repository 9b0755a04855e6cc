// The store protocols as a worker uses them, against a real node's store served by serveStore over
// libp2p on loopback: path-info with withInputs (a job's .drv closure and its inputs in one round)
// and a nar stream whose consumer skips a NAR without reading it.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { receiveNars, serveStore } from '../../node/mesh/store-transfer.ts'
import { createLogger } from '../../node/log.ts'
import { CliStore } from '../../node/nix/cli-store.ts'
import { exec, execText } from '../../node/nix/exec.ts'
import { MAX_REPLY_BYTES, PROTOCOL_PATH_INFO } from '../../protocols/mesh/constants.ts'
import { validatePathInfoReply, type PathInfoReply } from '../../protocols/mesh/messages.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'
import { waitFor, within } from '../helpers/wait.ts'

const tag = randomBytes(6).toString('hex')
const store = new CliStore()

async function network (bootstrap: string[] = []): Promise<MeshNetwork> {
  const net = new MeshNetwork({
    privateKey: await generateKeyPair('Ed25519'),
    listen: ['/ip4/127.0.0.1/tcp/0'],
    meshSecret: `store-transfer-${tag}`,
    mdns: false,
    bootstrap,
    log: createLogger('net', 'warn')
  })
  await net.start()
  return net
}

async function dump (path: string): Promise<Buffer> {
  const r = await exec('nix-store', ['--dump', path])
  assert.equal(r.code, 0, r.stderr)
  return r.stdout
}

async function outOf (drvPath: string): Promise<string> {
  return (await execText('nix-store', ['--query', '--outputs', drvPath])).trim()
}

describe('store protocols against a real store', { timeout: 120_000 }, () => {
  let server: MeshNetwork
  let client: MeshNetwork
  let cleanup: () => Promise<void>
  // x ← y ← z, z also using x directly; u uses w, which is never built.
  let drv: Record<'x' | 'y' | 'z' | 'w' | 'u', string>

  before(async () => {
    const t = await tempDir()
    cleanup = t.cleanup
    const expr = `let
      x = ${shDrv(`st-x-${tag}`, `echo x-${tag} > $out`)};
      y = ${shDrv(`st-y-${tag}`, 'echo ${x} > $out')};
      z = ${shDrv(`st-z-${tag}`, 'echo ${y} ${x} > $out')};
      w = ${shDrv(`st-w-${tag}`, `echo w-${tag} > $out`)};
      u = ${shDrv(`st-u-${tag}`, 'echo ${w} > $out')};
    in { inherit x y z w u; }`
    const [x, y, z, w, u] = await instantiate(expr, t.dir, ['x', 'y', 'z', 'w', 'u'])
    assert.ok(x !== undefined && y !== undefined && z !== undefined && w !== undefined && u !== undefined)
    drv = { x, y, z, w, u }
    await store.realise(drv.y)
    server = await network()
    await serveStore(server, store, createLogger('server', 'warn'))
    client = await network([server.addresses()[0] ?? assert.fail('the server listens nowhere')])
    await waitFor(() => client.connectedPeers().includes(server.peerId), 10_000, 'the client to connect')
  })

  after(async () => {
    await client?.stop()
    await server?.stop()
    await cleanup?.()
  })

  async function pathInfo (request: unknown): Promise<PathInfoReply> {
    const ch = await client.open(server.peerId, PROTOCOL_PATH_INFO)
    try {
      await ch.writeMessage(request)
      return await ch.readMessage(validatePathInfoReply, { maxBytes: MAX_REPLY_BYTES, timeoutMs: 15_000 })
    } finally {
      await ch.close()
    }
  }

  it('path-info withInputs describes the .drv closure and the input outputs in one reply, references first', async () => {
    const [xOut, yOut] = [await outOf(drv.x), await outOf(drv.y)]
    const reply = await within(pathInfo({ roots: [drv.z], withInputs: true }), 20_000, 'path-info')
    assert.deepEqual([...(reply.inputs ?? [])].sort(), [xOut, yOut].sort())
    assert.deepEqual(reply.missing, [])
    const expected = (await execText('nix-store', ['--query', '--requisites', drv.z, xOut, yOut])).trim().split('\n')
    assert.deepEqual(reply.infos.map(i => i.path).sort(), [...expected].sort())
    const seen = new Set<string>()
    for (const info of reply.infos) {
      for (const r of info.references) if (r !== info.path) assert.ok(seen.has(r), `${info.path} comes before its reference ${r}`)
      seen.add(info.path)
    }
    // Without the flag, only the .drv closure, as before.
    const plain = await pathInfo({ roots: [drv.z] })
    assert.equal(plain.inputs, undefined)
    assert.deepEqual(plain.infos.map(i => i.path).sort(), (await execText('nix-store', ['--query', '--requisites', drv.z])).trim().split('\n').sort())
  })

  it('path-info withInputs names the inputs the server lacks as missing, and describes the rest', async () => {
    const wOut = await outOf(drv.w)
    const reply = await within(pathInfo({ roots: [drv.u], withInputs: true }), 20_000, 'path-info')
    assert.deepEqual(reply.inputs, [wOut])
    assert.deepEqual(reply.missing, [wOut])
    assert.ok(reply.infos.some(i => i.path === drv.u))
  })

  it('a nar stream whose consumer closes a NAR unread still delivers the next one intact', async () => {
    const [xOut, yOut] = [await outOf(drv.x), await outOf(drv.y)]
    const got = new Map<string, Buffer>()
    await within((async () => {
      for await (const { info, nar } of receiveNars(client, server.peerId, [xOut, yOut])) {
        if (info.path === xOut) {
          // What importNar does with a path that became valid meanwhile: close without reading.
          await nar[Symbol.asyncIterator]().return?.()
          continue
        }
        const parts: Uint8Array[] = []
        for await (const c of nar) parts.push(c)
        got.set(info.path, Buffer.concat(parts))
      }
    })(), 20_000, 'the nar stream')
    assert.deepEqual([...got.keys()], [yOut])
    assert.ok(got.get(yOut)?.equals(await dump(yOut)), 'the second NAR is byte-exact')
  })
})
