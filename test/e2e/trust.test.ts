// End to end, on test hosts with real Nix: whom the signer and the submitters trust comes from
// their own configuration. Hosts: 0 a worker and submitter (its key in the signer's
// --trusted-keys, the cache key in its --cache-public-key), 1 the honest signer (which builds
// too), 2 a member that announces itself as signer with a cache key nobody configured, 3 a plain
// Nix machine outside the mesh.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { cli, generateKey, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { waitFor } from '../helpers/wait.ts'

const CACHE_PORT = 8080
const ROGUE_PORT = 8081
const MIDS = 6

function dagExpr (tag: string): string {
  return `
let
  mk = { name, deps ? [], sleep ? 0 }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      echo ${tag} \${name} > $out
      for d in \${toString deps}; do /bin/cat $d >> $out; done
      /bin/sleep \${toString sleep}
    '' ];
  };
  base = mk { name = "base"; };
  mid = builtins.genList (i: mk { name = "mid-\${toString i}"; deps = [ base ]; sleep = 2; }) ${MIDS};
  top = mk { name = "top"; deps = mid; };
in { inherit top; }`
}


describe('trust comes from each node\'s own configuration', { timeout: 900_000 }, () => {
  let net: TestNetwork
  let worker: MeshNodeHandle
  let signer: MeshNodeHandle | undefined
  let rogue: MeshNodeHandle | undefined
  let cache: { sec: string, pub: string }
  let evil: { sec: string, pub: string }
  let cacheUrl: string
  let trustedFile: string

  before(async () => {
    net = await TestNetwork.create({ hosts: 4 })
    cache = await generateKey(net, 'mesh-cache-1')
    evil = await generateKey(net, 'evil-cache-1')
    cacheUrl = `http://${net.host(1).address}:${CACHE_PORT}`
    worker = await startNode(net, net.host(0), { args: ['--max-jobs', '1', '--cache-public-key', cache.pub] })
    trustedFile = join(net.sharedDir, 'trusted-keys')
    await writeFile(trustedFile, `# host 0 only\n${(await status(worker)).self.signingKey ?? ''}\n`)
  })

  after(async () => {
    for (const n of [worker, signer, rogue]) if (n !== undefined) await stopNode(n).catch(() => {})
    await net?.destroy()
  })

  it('Signer trusts itself: a signer that builds part of a DAG caches every output, its own included', async () => {
    signer = await startNode(net, net.host(1), {
      args: ['--max-jobs', '2', '--signer', '--cache-key', cache.sec, '--cache-listen', `0.0.0.0:${CACHE_PORT}`, '--trusted-keys', trustedFile]
    })
    await waitForMesh([worker, signer])
    const drvs = await instantiateIn(net, worker.host, dagExpr(randomBytes(6).toString('hex')), ['top'])
    const r = await submit(worker, drvs)
    assert.equal(r.code, 0, r.stderr + r.stdout)
    const results = r.report?.results ?? []
    assert.equal(results.length, MIDS + 2)
    const bySigner = results.filter(x => x.builtBy === signer?.peerId)
    assert.ok(bySigner.length > 0, `the signer built part of the DAG: ${JSON.stringify(results.map(x => x.builtBy))}`)
    assert.ok(results.some(x => x.builtBy === worker.peerId), 'the worker built part of it too')
    const outputs = results.flatMap(x => Object.values(x.outputs))

    await waitFor(async () => (await status(signer as MeshNodeHandle)).signer?.paths === outputs.length, 90_000,
      `the signer to cache all ${outputs.length} outputs`, 500)
    const s = await status(signer)
    assert.deepEqual(s.signer?.rejections ?? [], [], 'nothing refused, the signer\'s own builds included')
    const own = s.self.signingKey ?? ''
    assert.ok(s.signer?.trust?.keys.includes(own), `the signer trusts its own key: ${JSON.stringify(s.signer?.trust)}`)

    // A fresh machine with only the cache and its key substitutes every output, the signer's own
    // and those that depend on them.
    const fresh = net.host(3)
    const env = { ...fresh.nixEnv(), NIX_CONFIG: `${fresh.nixEnv().NIX_CONFIG ?? ''}\nsubstituters = ${cacheUrl}\ntrusted-public-keys = ${cache.pub}` }
    const got = await fresh.exec('nix-store', ['--realise', ...outputs], { env })
    assert.equal(got.code, 0, got.stderr)
    for (const out of outputs) await fresh.execText('nix-store', ['--verify-path', out])
  })

  it('a member announcing itself as signer with a cache key nobody configured: no node substitutes from it', async () => {
    // The rogue first builds a DAG alone (another mesh secret) and caches it under its own key.
    const rogueDir = join(net.sharedDir, 'rogue')
    const rogueArgs = ['--signer', '--cache-key', evil.sec, '--cache-listen', `0.0.0.0:${ROGUE_PORT}`]
    const alone = join(net.sharedDir, 'rogue.secret')
    await writeFile(alone, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 })
    rogue = await startNode(net, net.host(2), { args: ['--max-jobs', '4', ...rogueArgs], dataDir: rogueDir, secretFile: alone })
    const expr = dagExpr(randomBytes(6).toString('hex'))
    const own = await instantiateIn(net, rogue.host, expr, ['top'])
    const built = await submit(rogue, own)
    assert.equal(built.code, 0, built.stderr + built.stdout)
    const count = built.report?.results.length ?? 0
    await waitFor(async () => (await status(rogue as MeshNodeHandle)).signer?.paths === count, 60_000, 'the rogue to cache its DAG', 500)
    await stopNode(rogue)

    // Now it joins the mesh, building nothing, while the honest signer is away: before, every
    // submitter took the first beacon saying "signer" and substituted from it.
    assert.ok(signer !== undefined)
    await stopNode(signer)
    rogue = await startNode(net, net.host(2), { args: ['--max-jobs', '0', ...rogueArgs], dataDir: rogueDir })
    await waitForMesh([worker, rogue])
    await waitFor(async () => (await status(worker)).peers.some(p => p.peerId === rogue?.peerId), 30_000, 'the worker to see the rogue')

    const drvs = await instantiateIn(net, worker.host, expr, ['top'])
    assert.deepEqual(drvs, own, 'the same derivations the rogue has cached')
    const r = await submit(worker, drvs)
    assert.equal(r.code, 0, r.stderr + r.stdout)
    const results = r.report?.results ?? []
    assert.equal(results.length, count)
    assert.deepEqual(results.filter(x => x.state !== 'built').map(x => [x.drvPath, x.state]), [], 'the submitter built everything, substituted nothing')
    assert.ok(results.every(x => x.builtBy === worker.peerId))

    const s = await status(worker)
    assert.equal(s.signer, undefined, 'the rogue is not taken for the signer')
    assert.equal(s.cache?.url, undefined)
    const ignored = s.cache?.ignored.find(i => i.peerId === rogue?.peerId)
    assert.equal(ignored?.cacheKey, evil.pub)
    assert.match(ignored?.reason ?? '', /not one of --cache-public-key/)
    const plain = await cli(worker, ['status'])
    assert.match(plain.stdout, /ignored signer .* with cache key evil-cache-1:/)
    const log = await readFile(worker.logFile, 'utf8')
    const lines = log.split('\n').filter(l => l.includes(`ignoring the signer ${rogue?.peerId ?? ''}`))
    assert.equal(lines.length, 1, 'the ignored signer is logged once')
  })
})
