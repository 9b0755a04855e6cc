// A member that serves a NAR whose bytes do not match the hash it gave is cut off: a real
// MeshNode (real libp2p on loopback, this machine's Nix store) fetches a path from a rogue that
// sends one corrupted byte; nothing is imported, the rogue's connection is closed and refused,
// and `status` (the report and its rendering) names the rogue, the reason and until when.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { MeshNode } from '../../node/mesh/mesh-node.ts'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { fetchClosure } from '../../node/mesh/store-transfer.ts'
import { renderStatus } from '../../node/cli/commands/status.ts'
import { createLogger } from '../../node/log.ts'
import { exec, execText } from '../../node/nix/exec.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { PROTOCOL_NAR, PROTOCOL_PATH_INFO } from '../../protocols/mesh/constants.ts'
import { validateNarRequest, validatePathInfoRequest } from '../../protocols/mesh/messages.ts'
import { tempDir } from '../helpers/nix.ts'
import { waitFor, within } from '../helpers/wait.ts'
import { startLoopbackNode, startRogue } from '../helpers/loopback-mesh.ts'

const isValid = async (p: string): Promise<boolean> => (await exec('nix-store', ['--check-validity', p])).code === 0

describe('a peer serving a wrong NAR', { timeout: 120_000 }, () => {
  let node: MeshNode
  let rogue: MeshNetwork
  let dir: string
  let cleanup: () => Promise<void>

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-bad-nar-'))
    node = await startLoopbackNode(dir, 'bad-nar', { log: createLogger('node', 'warn') })
    rogue = await startRogue(node, 'bad-nar')
  })

  after(async () => {
    await rogue?.stop()
    await node?.stop()
    await cleanup?.()
  })

  it('imports nothing, cuts the rogue off and shows it in status', async () => {
    // A real path and its NAR, then deleted: the rogue serves it with one byte flipped.
    const file = join(dir, 'payload')
    await writeFile(file, `bad-nar test ${randomBytes(16).toString('hex')}\n`)
    const path = (await execText('nix-store', ['--add', file])).trim()
    const nar = (await exec('nix-store', ['--dump', path])).stdout
    await execText('nix-store', ['--delete', path])
    const info = { path, narHash: Hash.of('sha256', nar).toNix32(), narSize: nar.byteLength, references: [] }
    const bad = Buffer.from(nar)
    bad[bad.length - 20] = (bad[bad.length - 20] ?? 0) ^ 1
    await rogue.handle(PROTOCOL_PATH_INFO, async (ch) => {
      await ch.readMessage(validatePathInfoRequest, { maxBytes: 1 << 20, timeoutMs: 5000 })
      await ch.writeMessage({ infos: [info], missing: [] })
    })
    await rogue.handle(PROTOCOL_NAR, async (ch) => {
      await ch.readMessage(validateNarRequest, { maxBytes: 1 << 20, timeoutMs: 5000 })
      await ch.writeMessage({ path, info })
      await ch.write(bad)
    })

    await assert.rejects(within(fetchClosure(node.network, node.store, rogue.peerId, [path]), 30_000, 'fetchClosure'), { name: 'NarHashMismatch' })
    assert.equal(await isValid(path), false, 'the corrupted path became valid')

    await waitFor(() => !node.network.connectedPeers().includes(rogue.peerId), 10_000, 'the rogue\'s connection to close')
    const s = node.status()
    const p = s.penalties.find(x => x.peer === rogue.peerId) ?? assert.fail(`status shows no penalty: ${JSON.stringify(s.penalties)}`)
    assert.match(p.reason, /does not match its hash/)
    assert.ok(Date.parse(p.until) > Date.now() + 60_000, `cut off only until ${p.until}`)
    assert.match(renderStatus(s, new Date()), new RegExp(`Cut off: ${rogue.peerId.slice(0, 6)}.*until ${p.until.replace(/[.]/g, '\\.')}: served a NAR`))

    // Refused while cut off, in both directions.
    await assert.rejects(rogue.open(node.peerId, PROTOCOL_NAR, AbortSignal.timeout(5_000)))
    await assert.rejects(node.network.open(rogue.peerId, PROTOCOL_NAR, AbortSignal.timeout(5_000)))
    assert.equal(node.network.connectedPeers().includes(rogue.peerId), false)
  })
})
