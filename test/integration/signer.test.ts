// The signer against a worker that lies: real libp2p on loopback, a real MeshNode as signer with
// its HTTP cache, and a rogue peer that offers a path and then serves a NAR that does not match.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair as generatePeerKey } from '@libp2p/crypto/keys'
import { MeshNode } from '../../node/mesh/mesh-node.ts'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { call } from '../../node/mesh/rpc.ts'
import { createLogger } from '../../node/log.ts'
import { CliStore } from '../../node/nix/cli-store.ts'
import { exec, execText } from '../../node/nix/exec.ts'
import { SIGN } from '../../protocols/mesh/request-protocols.ts'
import { PROTOCOL_NAR } from '../../protocols/mesh/constants.ts'
import { validateNarRequest, type PathInfoMessage } from '../../protocols/mesh/messages.ts'
import { generateKeyPair } from '../../protocols/nix/signing-key.ts'
import { signDetached } from '../../protocols/nix/signature.ts'
import { pathFingerprint } from '../../node/signer/offer.ts'
import { toMessage } from '../../node/nix/path-info-message.ts'
import { tempDir } from '../helpers/nix.ts'
import { waitFor } from '../helpers/wait.ts'

const log = createLogger('test', process.env.TEST_LOG === '1' ? 'debug' : 'error')

describe('the signer and a lying worker', { timeout: 120_000 }, () => {
  let dir: { dir: string, cleanup: () => Promise<void> }
  let signer: MeshNode
  let rogue: MeshNetwork
  const rogueKey = generateKeyPair('rogue-worker-1')
  /** What the rogue serves for each path: the NAR bytes. */
  const served = new Map<string, Buffer>()
  let cacheUrl = ''

  before(async () => {
    dir = await tempDir()
    signer = await MeshNode.start({
      dataDir: join(dir.dir, 'signer'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      capabilities: { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] },
      maxJobs: 0,
      speedFactor: 1,
      meshSecret: 'test',
      mdns: false,
      minFreeDiskBytes: 0,
      log,
      // The rogue's key is trusted by configuration: what is tested here is what comes after.
      trustedKeys: [rogueKey.publicKey],
      // The rogue must stay connected through every case: penalties are logged, not enforced.
      penalties: { durationMs: 0 },
      signer: {
        cacheKey: generateKeyPair('cache-1').secretKey,
        cacheDir: join(dir.dir, 'cache'),
        cacheListen: { host: '127.0.0.1', port: 0 }
      }
    })
    cacheUrl = signer.status().signer?.cacheUrls[0] ?? ''
    rogue = new MeshNetwork({
      privateKey: await generatePeerKey('Ed25519'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      meshSecret: 'test',
      mdns: false,
      bootstrap: [signer.network.addresses()[0] ?? ''],
      log
    })
    await rogue.start()
    await rogue.handle(PROTOCOL_NAR, async (channel) => {
      const req = await channel.readMessage(validateNarRequest, { maxBytes: 1 << 20 })
      for (const path of req.paths) {
        const nar = served.get(path) ?? Buffer.alloc(0)
        await channel.writeMessage({ path, info: offered.get(path) })
        await channel.write(nar)
      }
    })
    await waitFor(() => rogue.connectedPeers().includes(signer.peerId), 10_000, 'the rogue to connect')
  })

  after(async () => {
    await rogue?.stop()
    await signer?.stop()
    await dir?.cleanup()
  })

  const offered = new Map<string, PathInfoMessage>()

  /** A real store path, its honest metadata signed by the rogue's (trusted) key, and its NAR. */
  async function makePath (): Promise<{ info: PathInfoMessage, nar: Buffer }> {
    const file = join(dir.dir, `payload-${randomBytes(4).toString('hex')}`)
    await writeFile(file, randomBytes(200_000))
    const path = (await execText('nix-store', ['--add', file])).trim()
    const pi = await new CliStore().queryPathInfo(path)
    assert.ok(pi !== null)
    const info = { ...toMessage(pi), signatures: [signDetached(pathFingerprint(pi), rogueKey.secretKey)] }
    const nar = (await exec('nix-store', ['--dump', path])).stdout
    return { info, nar }
  }

  const inCache = async (path: string): Promise<number> =>
    (await fetch(`${cacheUrl}/${path.slice(11, 43)}.narinfo`)).status

  it('refuses a NAR whose hash differs from the NarHash the worker signed, and caches nothing', async () => {
    const { info, nar } = await makePath()
    const bad = Buffer.from(nar)
    bad[bad.length - 20] = (bad[bad.length - 20] ?? 0) ^ 0xff // inside the file's contents
    offered.set(info.path, info)
    served.set(info.path, bad)
    const reply = await call(rogue, signer.peerId, SIGN, { paths: [info] })
    assert.deepEqual(reply.stored, [])
    assert.equal(reply.rejected[0]?.path, info.path)
    assert.match(reply.rejected[0]?.reason ?? '', /NAR refused: NAR of .* does not match: expected sha256:/)
    assert.equal(await inCache(info.path), 404)
    const why = signer.status().signer?.rejections?.find(r => r.path === info.path)
    assert.equal(why?.from, rogue.peerId)
  })

  it('refuses a path whose reference is not in the cache, and an unsigned one', async () => {
    const { info } = await makePath()
    const dangling = { ...info, references: ['/nix/store/' + 'a'.repeat(32) + '-elsewhere'] }
    const unsigned = { ...info, signatures: [] }
    const reply = await call(rogue, signer.peerId, SIGN, { paths: [unsigned] })
    assert.match(reply.rejected[0]?.reason ?? '', /no signature/)
    const reply2 = await call(rogue, signer.peerId, SIGN, { paths: [{ ...dangling, signatures: [signDetached(pathFingerprint({ path: dangling.path, narHash: (await new CliStore().queryPathInfo(info.path))!.narHash, narSize: dangling.narSize, references: dangling.references }), rogueKey.secretKey)] }] })
    assert.match(reply2.rejected[0]?.reason ?? '', /reference .*elsewhere is not in the cache/)
    assert.equal(reply2.rejected[0]?.permanent, false)
  })

  it('stores an honest NAR, re-signed with the cache key, served over HTTP', async () => {
    const { info, nar } = await makePath()
    offered.set(info.path, info)
    served.set(info.path, nar)
    const reply = await call(rogue, signer.peerId, SIGN, { paths: [info] })
    assert.deepEqual(reply.stored, [info.path])
    assert.equal(await inCache(info.path), 200)
    const text = await (await fetch(`${cacheUrl}/${info.path.slice(11, 43)}.narinfo`)).text()
    assert.match(text, /^Sig: cache-1:/m)
    assert.match(text, new RegExp(`^NarHash: ${info.narHash}$`, 'm'))
  })
})
