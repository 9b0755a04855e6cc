// End to end: the signing node and the shared binary cache, on test hosts with real Nix.
// Hosts: 0 and 1 are workers, 2 is the signer, 3 is a plain Nix machine outside the mesh.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, writeFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { MESHBUILD_BIN, cli, generateKey, instantiateIn, startNode, status, stopNode, submit, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { waitFor } from '../helpers/wait.ts'
import { execText } from '../../node/nix/exec.ts'

const CACHE_PORT = 8080

function dagExpr (tag: string, countFile: string): string {
  return `
let
  mk = { name, deps ? [], sleep ? 0 }: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''
      echo \${name} >> ${countFile}
      echo ${tag} \${name} > $out
      for d in \${toString deps}; do /bin/cat $d >> $out; done
      /bin/sleep \${toString sleep}
    '' ];
  };
  base = mk { name = "base"; };
  mid = builtins.genList (i: mk { name = "mid-\${toString i}"; deps = [ base ]; sleep = 1; }) 4;
  top = mk { name = "top"; deps = mid; };
  lone = mk { name = "lone"; };
in { inherit top lone; }`
}

async function buildCount (file: string): Promise<number> {
  const text = await readFile(file, 'utf8').catch(() => '')
  return text.split('\n').filter(l => l !== '').length
}

describe('the signing node and the shared binary cache', { timeout: 600_000 }, () => {
  let net: TestNetwork
  const nodes: MeshNodeHandle[] = []
  let signer: MeshNodeHandle | undefined
  let expr: string
  let countFile: string
  let cachePub: string
  let cacheSec: string
  let cacheUrl: string
  let outputs: string[] = []
  let drvs: string[] = []
  let bothWorkers = ''

  before(async () => {
    net = await TestNetwork.create({ hosts: 4 })
    countFile = join(net.sharedDir, 'builds')
    expr = dagExpr(randomBytes(6).toString('hex'), countFile)
    ;({ sec: cacheSec, pub: cachePub } = await generateKey(net, 'mesh-cache-1'))
    cacheUrl = `http://${net.host(2).address}:${CACHE_PORT}`
    // Every node uses the shared cache only because its key is configured here.
    for (const i of [0, 1]) nodes.push(await startNode(net, net.host(i), { args: ['--max-jobs', '2', '--cache-public-key', cachePub] }))
    await waitForMesh(nodes)
    // The signer trusts the workers' keys because it is told to, not because they announce them.
    bothWorkers = join(net.sharedDir, 'both-workers')
    await writeFile(bothWorkers, (await Promise.all(nodes.map(async n => (await status(n)).self.signingKey ?? ''))).join('\n') + '\n')
  })

  after(async () => {
    for (const n of [...nodes, signer]) if (n !== undefined) await stopNode(n).catch(() => {})
    await net?.destroy()
  })

  const startSigner = async (extra: string[] = ['--trusted-keys', bothWorkers]): Promise<MeshNodeHandle> => {
    const s = await startNode(net, net.host(2), {
      args: ['--max-jobs', '1', '--signer', '--cache-key', cacheSec, '--cache-listen', `0.0.0.0:${CACHE_PORT}`, ...extra],
      dataDir: join(net.sharedDir, 'signer')
    })
    await waitForMesh([...nodes, s])
    return s
  }

  it('keeps built outputs queued while no signer is online, and caches them once one starts', async () => {
    const [a] = nodes
    assert.ok(a !== undefined)
    drvs = await instantiateIn(net, a.host, expr, ['top'])
    const r = await submit(a, drvs)
    assert.equal(r.code, 0, r.stderr + r.stdout)
    outputs = (r.report?.results ?? []).flatMap(x => Object.values(x.outputs))
    assert.equal(outputs.length, 6)
    const before = await Promise.all(nodes.map(async n => (await status(n)).signQueue))
    assert.ok(before.reduce((x, y) => x + y, 0) >= 6, `outputs wait for a signer: ${before.join(', ')}`)
    assert.equal((await status(a)).signer, undefined)

    signer = await startSigner()
    await waitFor(async () => (await status(signer as MeshNodeHandle)).signer?.paths === 6, 60_000, 'the signer to cache the 6 outputs', 500)
    const s = await status(a)
    assert.equal(s.signer?.peerId, signer.peerId)
    assert.equal(s.signer?.cacheKey, cachePub)
    assert.ok(typeof s.self.signingKey === 'string' && s.self.signingKey.includes(':'))
    assert.ok(s.peers.every(p => typeof p.signingKey === 'string'))
    await waitFor(async () => (await Promise.all(nodes.map(async n => (await status(n)).signQueue))).every(q => q === 0), 30_000, 'the queues to empty')
  })

  it('serves a plain Nix outside the mesh, which checks the cache key itself', async () => {
    const fresh = net.host(3)
    const env = { ...fresh.nixEnv(), NIX_CONFIG: `${fresh.nixEnv().NIX_CONFIG ?? ''}\nsubstituters = ${cacheUrl}\ntrusted-public-keys = ${cachePub}` }
    const got = await fresh.exec('nix-store', ['--realise', ...outputs], { env })
    assert.equal(got.code, 0, got.stderr)
    for (const out of outputs) await fresh.execText('nix-store', ['--verify-path', out])
    const [a] = nodes
    assert.ok(a !== undefined)
    for (const out of outputs) {
      assert.equal((await fresh.execText('nix-store', ['--query', '--hash', out])).trim(), (await a.host.execText('nix-store', ['--query', '--hash', out])).trim())
    }
  })

  it('is refused by Nix that trusts another key', async () => {
    const fresh = net.host(3)
    await execText(process.execPath, [MESHBUILD_BIN, 'key', 'generate', 'other', '--secret-file', join(net.sharedDir, 'o.sec'), '--public-file', join(net.sharedDir, 'o.pub')])
    const wrong = (await readFile(join(net.sharedDir, 'o.pub'), 'utf8')).trim()
    // A second fresh store: host 3's has the outputs already.
    const root = join(net.sharedDir, 'other-root')
    const realise = async (storeRoot: string, key: string): Promise<{ code: number | null, stderr: string }> =>
      await fresh.exec('nix-store', ['--store', storeRoot, '--realise', outputs[0] ?? ''], {
        env: { ...fresh.nixEnv(), NIX_CONFIG: `${fresh.nixEnv().NIX_CONFIG ?? ''}\nsubstituters = ${cacheUrl}\ntrusted-public-keys = ${key}` }
      })
    const r = await realise(root, wrong)
    assert.notEqual(r.code, 0)
    // Nix's own signature refusal, not a cache it could not reach ("don't know how to build").
    assert.match(r.stderr, /is not signed by any of the keys in 'trusted-public-keys'/)
    // The control: the same fetch into another fresh store with the cache's key succeeds.
    const ok = await realise(join(net.sharedDir, 'right-root'), cachePub)
    assert.equal(ok.code, 0, ok.stderr)
  })

  it('builds nothing for a second submission of the same derivations: everything comes from the cache', async () => {
    const [, b] = nodes
    assert.ok(b !== undefined)
    // Host 1 has built part of the DAG; wipe nothing, but ask for it from a node that lacks the top.
    const mine = await instantiateIn(net, b.host, expr, ['top'])
    const builds = await buildCount(countFile)
    const r = await submit(b, mine)
    assert.equal(r.code, 0, r.stderr + r.stdout)
    assert.ok((r.report?.results ?? []).every(x => x.state === 'substituted'), JSON.stringify(r.report?.results.map(x => [x.drvPath, x.state])))
    assert.equal(await buildCount(countFile), builds, 'no derivation was built again')
    // The requested output is now valid on host 1 (its closure is itself: builders copy contents).
    const top = (r.report?.results ?? []).find(x => x.requested)
    for (const out of Object.values(top?.outputs ?? {})) await b.host.execText('nix-store', ['--verify-path', out])
  })

  it('refuses outputs signed by a key it does not trust, and says why', async () => {
    const [a, b] = nodes
    assert.ok(a !== undefined && b !== undefined && signer !== undefined)
    await stopNode(signer)
    const trusted = join(net.sharedDir, 'trusted-keys')
    await writeFile(trusted, `# only host 0\n${(await status(a)).self.signingKey ?? ''}\n`)
    signer = await startSigner(['--trusted-keys', trusted])
    const [lone] = await instantiateIn(net, b.host, expr, ['lone'])
    assert.ok(lone !== undefined)
    const r = await submit(b, [lone])
    assert.equal(r.code, 0, r.stderr)
    const built = r.report?.results[0]
    const out = Object.values(built?.outputs ?? {})[0] ?? ''
    assert.equal(built?.builtBy, b.peerId, 'host 1 built it itself')
    await waitFor(async () => ((await status(signer as MeshNodeHandle)).signer?.rejections ?? []).some(x => x.path === out), 30_000, 'the signer to refuse the untrusted output')
    const s = await status(signer)
    const why = s.signer?.rejections?.find(x => x.path === out)
    assert.match(why?.reason ?? '', /untrusted key/)
    // It trusts exactly the file's key and its own: host 1's announced key counts for nothing.
    const keys = s.signer?.trust?.keys ?? []
    assert.deepEqual(new Set(keys), new Set([(await status(a)).self.signingKey, s.self.signingKey]))
    assert.ok(!keys.includes((await status(b)).self.signingKey ?? ''), 'host 1\'s announced key is not trusted')
    assert.equal(why?.permanent, true)
    const plain = await cli(signer, ['status'])
    assert.match(plain.stdout, /refused .* untrusted key/)
    const probe = await net.host(3).exec('nix', ['path-info', '--option', 'narinfo-cache-negative-ttl', '0', '--store', cacheUrl, out])
    assert.notEqual(probe.code, 0, 'the untrusted output is not in the cache')
  })

  it('leaves no partial NAR and no narinfo without its NAR when the signer is killed mid-write', async () => {
    assert.ok(signer !== undefined)
    const [a] = nodes
    assert.ok(a !== undefined)
    await stopNode(signer)
    signer = await startSigner()
    // A big output, so the kill lands during the transfer.
    const bigExpr = `derivation { name = "big-${randomBytes(4).toString('hex')}"; system = builtins.currentSystem; builder = "/bin/sh";
      args = [ "-c" "/usr/bin/head -c 300000000 /dev/urandom > $out" ]; }`
    const [big] = await instantiateIn(net, a.host, bigExpr, [])
    assert.ok(big !== undefined)
    const r = await submit(a, [big])
    assert.equal(r.code, 0, r.stderr)
    const cacheDir = join(signer.dataDir, 'cache')
    await waitFor(async () => (await readdir(join(cacheDir, 'tmp')).catch(() => [])).length > 0, 60_000, 'the signer to start writing the big NAR', 20)
    const partial = await readdir(join(cacheDir, 'tmp'))
    await stopNode(signer, 'SIGKILL')
    signer = await startSigner()
    const narinfos = (await readdir(cacheDir)).filter(f => f.endsWith('.narinfo'))
    for (const f of narinfos) {
      const text = await readFile(join(cacheDir, f), 'utf8')
      const url = /^URL: (.*)$/m.exec(text)?.[1] ?? ''
      const size = Number(/^FileSize: (\d+)$/m.exec(text)?.[1])
      const st = await readFile(join(cacheDir, url)).then(b => b.byteLength).catch(() => -1)
      assert.equal(st, size, `${f} points at ${url}, which must exist whole`)
    }
    // The worker may already be offering again, writing new temporary files: only the
    // half-written ones from before the kill must be gone.
    const left: string[] = await readdir(join(cacheDir, 'tmp')).catch(() => [])
    assert.deepEqual(partial.filter(f => left.includes(f)), [], 'no temporary file survives a restart')
    // The worker offers it again; it arrives whole.
    const out = Object.values(r.report?.results[0]?.outputs ?? {})[0] ?? ''
    // Nix remembers a missing narinfo for an hour unless told otherwise.
    await waitFor(async () => (await net.host(3).exec('nix', ['path-info', '--option', 'narinfo-cache-negative-ttl', '0', '--store', cacheUrl, out])).code === 0, 120_000, 'the big output to reach the cache after the restart', 1000)
  })
})
