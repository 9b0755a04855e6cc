// DaemonStore against the real `nix-daemon --stdio` (Nix 2.8, as root), compared with CliStore's
// answers: queries, NAR export and import (signatures included), builds and their failure
// classes, aborts, daemon errors, a daemon killed mid-request, and a 300 MiB NAR both ways in
// constant memory.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash, randomBytes, randomInt } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { CliStore } from '../../node/nix/cli-store.ts'
import { DaemonStore } from '../../node/nix/daemon-store.ts'
import { exec } from '../../node/nix/exec.ts'
import {
  BuildFailure, NarHashMismatch, OperationAborted, PathNotValid,
  type ImportInfo, type NarEntry, type PathInfo
} from '../../node/nix/store-backend.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { fingerprint, signDetached } from '../../protocols/nix/signature.ts'
import { generateKeyPair } from '../../protocols/nix/signing-key.ts'
import { storePathBaseName, storePathHashPart } from '../../protocols/nix/store-path.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'
import { waitFor, within } from '../helpers/wait.ts'

const TEST_TIMEOUT = 60_000
/** A query or a small NAR: the daemon answers in milliseconds; this only bounds a hang. */
const REQUEST_MS = 15_000
/** A build of a few echoes and sleeps of at most 2 s. */
const BUILD_MS = 30_000
const MiB = 1024 * 1024
const tag = randomBytes(6).toString('hex')
const cli = new CliStore()
const missingPath = (c: string, ext = ''): string => `/nix/store/${c.repeat(32)}-missing-${tag}${ext}`

let store: DaemonStore
let tmp: { dir: string, cleanup: () => Promise<void> }
/** Processes a test leaves behind on failure (an orphaned builder), killed in after(). */
const leftovers = new Set<string>()

// ---- helpers -------------------------------------------------------------------------------

interface Proc { pid: number, ppid: number, args: string }

async function processes (): Promise<Proc[]> {
  const { stdout } = await promisify(execFile)('ps', ['-eo', 'pid=,ppid=,args='], { maxBuffer: 16 * MiB })
  return stdout.split('\n').flatMap(l => {
    const m = /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(l)
    return m != null ? [{ pid: Number(m[1]), ppid: Number(m[2]), args: m[3] ?? '' }] : []
  })
}

/** Processes whose command line contains `marker` (ps itself excluded). */
async function withMarker (marker: string): Promise<Proc[]> {
  return (await processes()).filter(p => p.args.includes(marker) && !p.args.startsWith('ps '))
}

/** The `nix-daemon --stdio` processes this test process started (through its DaemonStores). */
async function daemonChildren (): Promise<number[]> {
  return (await processes()).filter(p => p.ppid === process.pid && p.args.startsWith('nix-daemon --stdio')).map(p => p.pid)
}

function kill (pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try { process.kill(pid, signal) } catch { /* gone already */ }
}

/** A unique sleep a builder runs, to find its process by. */
function sleepMarker (seconds: number): string {
  return `/bin/sleep ${seconds}.${randomInt(100_000, 999_999)}`
}

async function drvOf (name: string, script: string, extra = ''): Promise<string> {
  const [drv] = await instantiate(shDrv(`${name}-${randomBytes(4).toString('hex')}-${tag}`, script, extra), tmp.dir)
  assert.ok(drv !== undefined)
  return drv
}

async function outputsOf (drvPath: string): Promise<Record<string, string>> {
  const json = JSON.parse(await nix('nix', 'show-derivation', drvPath)) as Record<string, { outputs: Record<string, { path: string }> }>
  return Object.fromEntries(Object.entries(json[drvPath]?.outputs ?? {}).map(([k, v]) => [k, v.path]))
}

async function collect (nar: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const c of nar) parts.push(c)
  return Buffer.concat(parts)
}

async function * chunks (bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size)
}

async function * entries (list: Array<[string, Uint8Array]>): AsyncGenerator<NarEntry> {
  for (const [path, bytes] of list) yield { path, nar: chunks(bytes, 1000) }
}

/** The error a promise rejects with (fails the test if it resolves). */
async function rejection (p: Promise<unknown>, what: string, ms = REQUEST_MS): Promise<Error> {
  const err = await within(p.then(() => null, (e: unknown) => e), ms, what)
  assert.ok(err instanceof Error, `${what} succeeded`)
  return err
}

/** PathInfo with the hash as text and optional fields made explicit, for deepEqual. */
function plain (i: PathInfo | null | undefined): Record<string, unknown> | null {
  if (i == null) return null
  return {
    path: i.path,
    narHash: i.narHash.toNix32(),
    narSize: i.narSize,
    references: [...i.references],
    deriver: i.deriver ?? null,
    signatures: [...i.signatures].sort(),
    ca: i.ca ?? null
  }
}

/** What importNars registers, as ImportInfo gains signatures and ca (the API note). */
type FullImportInfo = ImportInfo & { signatures?: string[], ca?: string }

function importInfoOf (i: PathInfo): FullImportInfo {
  return { path: i.path, narHash: i.narHash, narSize: i.narSize, references: i.references, ...(i.deriver != null ? { deriver: i.deriver } : {}) }
}

/**
 * Builds fresh derivations (`scripts`, by name), dumps their outputs' NARs with CliStore, then
 * deletes the outputs: paths that are not valid, with a NAR and a registration to import.
 */
async function freshDeleted (make: (t: string) => string, attrs: string[]): Promise<Array<{ info: FullImportInfo, nar: Buffer }>> {
  const t = randomBytes(6).toString('hex')
  const drvs = await instantiate(make(t), tmp.dir, attrs)
  const paths: string[] = []
  for (const d of drvs) paths.push((await cli.realise(d)).outputs.out ?? '')
  const infos = await cli.queryPathInfos(paths)
  const out: Array<{ info: FullImportInfo, nar: Buffer }> = []
  for (const p of paths) {
    const i = infos.get(p)
    assert.ok(i != null)
    out.push({ info: importInfoOf(i), nar: await collect(cli.exportNar(p)) })
  }
  await nix('nix-store', '--delete', ...paths)
  assert.equal((await cli.isValid(paths)).size, 0, 'the fresh paths are deleted')
  return out
}

function flip (nar: Buffer, text: string): Buffer {
  const out = Buffer.from(nar)
  const at = out.indexOf(text)
  assert.ok(at > 0, `${text} is in the NAR`)
  out[at] = (out[at] ?? 0) ^ 0x01
  return out
}

/** Peak RSS above the level at start, sampled every 10 ms and on demand. */
function rssSampler (): { sample: () => void, stop: () => number } {
  const base = process.memoryUsage.rss()
  let peak = base
  const sample = (): void => { peak = Math.max(peak, process.memoryUsage.rss()) }
  const timer = setInterval(sample, 10)
  return { sample, stop: () => { clearInterval(timer); sample(); return peak - base } }
}

function narString (s: string): Buffer {
  const bytes = Buffer.from(s)
  return Buffer.concat([u64le(bytes.length), bytes, Buffer.alloc((8 - (bytes.length % 8)) % 8)])
}

function u64le (n: number): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(n))
  return b
}

/** The NAR of a regular file of `size` zero bytes, made as it streams (fresh buffers, as a network source gives). */
async function * zeroFileNar (size: number, chunk: number): AsyncGenerator<Uint8Array> {
  yield Buffer.concat(['nix-archive-1', '(', 'type', 'regular', 'contents'].map(narString).concat([u64le(size)]))
  for (let left = size; left > 0; left -= chunk) yield Buffer.allocUnsafe(Math.min(chunk, left)).fill(0)
  yield Buffer.concat([Buffer.alloc((8 - (size % 8)) % 8), narString(')')])
}

// ---- the shared fixture: a ← b ← c (two outputs), a tree with a symlink and an executable ----

const expr = `let
  a = ${shDrv(`a-${tag}`, `echo a-${tag} > $out`)};
  b = ${shDrv(`b-${tag}`, `echo \${a} > $out`)};
  c = ${shDrv(`c-${tag}`, `echo \${b} > $out; echo dev-${tag} > $dev`, 'outputs = [ "out" "dev" ];')};
  tree = ${shDrv(`tree-${tag}`, [
    '/bin/mkdir -p $out/sub',
    `echo tree-${tag} > $out/sub/file`,
    'echo "#!/bin/sh" > $out/run; /bin/chmod +x $out/run',
    '/bin/ln -s ${a} $out/link'
  ].join('; '))};
  unbuilt = ${shDrv(`unbuilt-${tag}`, `echo unbuilt-${tag} > $out`)};
in { inherit a b c tree unbuilt; }`
const ATTRS = ['a', 'b', 'c', 'tree', 'unbuilt'] as const
let drv: Record<typeof ATTRS[number], string>
let out: { a: string, b: string, cOut: string, cDev: string, tree: string }

before(async () => {
  tmp = await tempDir('mb-daemon-store-')
  const paths = await instantiate(expr, tmp.dir, [...ATTRS])
  drv = Object.fromEntries(ATTRS.map((a, i) => [a, paths[i] ?? ''])) as typeof drv
  const c = await cli.realise(drv.c)
  out = {
    a: (await outputsOf(drv.a)).out ?? '',
    b: (await outputsOf(drv.b)).out ?? '',
    cOut: c.outputs.out ?? '',
    cDev: c.outputs.dev ?? '',
    tree: (await cli.realise(drv.tree)).outputs.out ?? ''
  }
  store = new DaemonStore()
})

after(async () => {
  store?.close()
  for (const marker of leftovers) for (const p of await withMarker(marker)) kill(p.pid)
  await tmp?.cleanup()
})

// ---- 1. queries -------------------------------------------------------------------------

describe('DaemonStore queries agree with CliStore', { timeout: TEST_TIMEOUT }, () => {
  it('isValid answers for many paths at once and refuses what is not a store path', async () => {
    const unbuilt = (await outputsOf(drv.unbuilt)).out ?? ''
    const valid = await within(store.isValid([out.a, out.b, out.cOut, drv.c, missingPath('0'), unbuilt]), REQUEST_MS, 'isValid')
    assert.deepEqual([...valid].sort(), [out.a, out.b, out.cOut, drv.c].sort())
    await assert.rejects(store.isValid(['/tmp/not-a-store-path']), { name: 'InvalidStorePath' })
  })

  it('queryPathInfo and queryPathInfos give what CliStore gives, .drv paths included', async () => {
    const paths = [out.a, out.b, out.cOut, out.cDev, out.tree, drv.c, drv.tree]
    const ours = await within(store.queryPathInfos([...paths, missingPath('1'), missingPath('1', '.drv')]), REQUEST_MS, 'queryPathInfos')
    const theirs = await cli.queryPathInfos(paths)
    assert.deepEqual([...ours.keys()].sort(), [...paths].sort(), 'the missing paths are absent')
    for (const p of paths) {
      assert.deepEqual(plain(ours.get(p)), plain(theirs.get(p)), p)
      assert.deepEqual(plain(await within(store.queryPathInfo(p), REQUEST_MS, 'queryPathInfo')), plain(theirs.get(p)), p)
    }
    // Spot checks a user would rely on, should CliStore itself be wrong.
    assert.deepEqual(ours.get(out.b)?.references, [out.a])
    assert.equal(ours.get(out.b)?.deriver, drv.b)
    assert.match(ours.get(drv.c)?.ca ?? '', /^text:sha256:/)
    assert.ok(ours.get(out.a)?.narHash.equals(Hash.parse((await nix('nix-store', '--query', '--hash', out.a)).trim())))
    assert.equal(await store.queryPathInfo(missingPath('2')), null)
  })

  it('closure lists references first; a missing root is PathNotValid', async () => {
    const closure = await within(store.closure([out.cOut]), REQUEST_MS, 'closure')
    assert.deepEqual([...closure].sort(), [out.a, out.b, out.cOut].sort())
    assert.ok(closure.indexOf(out.a) < closure.indexOf(out.b))
    assert.ok(closure.indexOf(out.b) < closure.indexOf(out.cOut))
    await assert.rejects(within(store.closure([missingPath('3')]), REQUEST_MS, 'closure of a missing path'), { name: 'PathNotValid' })
  })

  it('closureInfos: a .drv root means the .drv itself, references first, missing roots listed', async () => {
    const roots = [drv.c, out.cOut, missingPath('4')]
    const ours = await within(store.closureInfos(roots), REQUEST_MS, 'closureInfos')
    const theirs = await cli.closureInfos(roots)
    assert.deepEqual(ours.missing, [missingPath('4')])
    const expected = (await nix('nix-store', '--query', '--requisites', drv.c, out.cOut)).trim().split('\n')
    assert.deepEqual(ours.infos.map(i => i.path).sort(), [...expected].sort())
    // The .drv root brings its input .drvs, not the outputs it would build.
    assert.ok(ours.infos.some(i => i.path === drv.a) && !ours.infos.some(i => i.path === out.cDev))
    const seen = new Set<string>()
    for (const info of ours.infos) {
      for (const r of info.references) if (r !== info.path) assert.ok(seen.has(r), `${info.path} comes before its reference ${r}`)
      seen.add(info.path)
    }
    const cliByPath = new Map(theirs.infos.map(i => [i.path, i]))
    for (const info of ours.infos) assert.deepEqual(plain(info), plain(cliByPath.get(info.path)), info.path)
  })

  it('queryPathFromHashPart finds a valid path by its hash part, and null for an unknown one', async () => {
    assert.equal(await within(store.queryPathFromHashPart(storePathHashPart(out.b)), REQUEST_MS, 'queryPathFromHashPart'), out.b)
    assert.equal(await within(store.queryPathFromHashPart(storePathHashPart(drv.c)), REQUEST_MS, 'queryPathFromHashPart'), drv.c)
    assert.equal(await within(store.queryPathFromHashPart('5'.repeat(32)), REQUEST_MS, 'queryPathFromHashPart'), null)
  })

  it('addTempRoot keeps a path from garbage collection while the store is open', async () => {
    const [rooted, control] = await instantiate(`{ r = ${shDrv(`rooted-${tag}`, `echo r-${tag} > $out`)}; c = ${shDrv(`ctl-${tag}`, `echo c-${tag} > $out`)}; }`, tmp.dir, ['r', 'c'])
    const r = (await cli.realise(rooted ?? '')).outputs.out ?? ''
    const c = (await cli.realise(control ?? '')).outputs.out ?? ''
    await within(store.addTempRoot(r), REQUEST_MS, 'addTempRoot')
    const refused = await exec('nix-store', ['--delete', r])
    assert.notEqual(refused.code, 0, 'nix-store --delete of a temp-rooted path fails')
    assert.match(refused.stderr, /still alive/)
    const deleted = await exec('nix-store', ['--delete', c])
    assert.equal(deleted.code, 0, `the control path without a root is deletable: ${deleted.stderr}`)
    assert.deepEqual([...await store.isValid([r, c])], [r])
  })

  it('queryMissing puts a derivation not built yet in willBuild, a built one nowhere', async () => {
    const unbuilt = await within(store.queryMissing([drv.unbuilt]), REQUEST_MS, 'queryMissing')
    assert.ok(unbuilt.willBuild.includes(drv.unbuilt), JSON.stringify(unbuilt))
    assert.deepEqual(unbuilt.willSubstitute, [], 'no substituters are configured')
    const built = await within(store.queryMissing([drv.c]), REQUEST_MS, 'queryMissing')
    assert.deepEqual(built.willBuild, [], JSON.stringify(built))
    // A path nothing can build or substitute.
    const unknown = await within(store.queryMissing([missingPath('6')]), REQUEST_MS, 'queryMissing')
    assert.deepEqual(unknown.unknown, [missingPath('6')], JSON.stringify(unknown))
    // It only asked: the output is still not built.
    assert.equal((await cli.isValid([(await outputsOf(drv.unbuilt)).out ?? ''])).size, 0)
  })
})

// ---- 1. NAR export and import -------------------------------------------------------------

describe('DaemonStore NAR export and import', { timeout: TEST_TIMEOUT }, () => {
  it('exportNar gives byte for byte what CliStore gives: a small file, a tree with a symlink and an executable', async () => {
    for (const p of [out.a, out.tree]) {
      const ours = await within(collect(store.exportNar(p)), REQUEST_MS, `exportNar ${p}`)
      const theirs = await collect(cli.exportNar(p))
      assert.ok(ours.equals(theirs), `the NAR of ${p} differs (${ours.length} vs ${theirs.length} bytes)`)
    }
    const info = await store.queryPathInfo(out.tree)
    assert.ok(info != null)
    const nar = await collect(store.exportNar(out.tree, { knownValid: true }))
    assert.equal(nar.length, info.narSize)
    assert.ok(Hash.of('sha256', nar).equals(info.narHash))
    await assert.rejects(within(collect(store.exportNar(missingPath('7'))), REQUEST_MS, 'exportNar of a missing path'), { name: 'PathNotValid' })
  })

  it('importNars brings back a deleted tree exported elsewhere, with its registration', async () => {
    // `a` is the fixture's a (the same derivation, so the same output): the link makes it a reference.
    const [tree] = await freshDeleted(t => `let a = ${shDrv(`a-${tag}`, `echo a-${tag} > $out`)}; in { x = ${shDrv(`itree-${t}`, [
      '/bin/mkdir -p $out/sub', `echo itree-${t} > $out/sub/file`,
      'echo "#!/bin/sh" > $out/run; /bin/chmod +x $out/run', '/bin/ln -s ${a} $out/link'
    ].join('; '))}; }`, ['x'])
    assert.ok(tree != null)
    assert.deepEqual(tree.info.references, [out.a])
    const r = await within(store.importNars([tree.info], entries([[tree.info.path, tree.nar]])), REQUEST_MS, 'importNars')
    assert.deepEqual(r, { imported: [tree.info.path] })
    const verify = await exec('nix-store', ['--verify-path', tree.info.path])
    assert.equal(verify.code, 0, verify.stderr)
    const after = await cli.queryPathInfo(tree.info.path)
    assert.ok(after?.narHash.equals(tree.info.narHash))
    assert.equal(after?.narSize, tree.info.narSize)
    assert.deepEqual(after?.references, [out.a])
    assert.equal(after?.deriver, tree.info.deriver)
    assert.ok((await collect(store.exportNar(tree.info.path))).equals(tree.nar), 'the imported path exports the same NAR')
  })

  it('importNars registers the signatures it is given: nix path-info --sigs shows them', async () => {
    const [fresh] = await freshDeleted(t => `{ x = ${shDrv(`signed-${t}`, `echo signed-${t} > $out`)}; }`, ['x'])
    assert.ok(fresh != null)
    const { secretKey } = generateKeyPair(`mb-test-${tag}-1`)
    const { info } = fresh
    const sig = signDetached(fingerprint({ storePath: info.path, narHash: info.narHash, narSize: info.narSize, references: info.references.map(r => storePathBaseName(r)) }), secretKey)
    await within(store.importNars([{ ...info, signatures: [sig] }], entries([[info.path, fresh.nar]])), REQUEST_MS, 'importNars with a signature')
    const shown = JSON.parse(await nix('nix', 'path-info', '--json', '--sigs', info.path)) as Array<{ signatures?: string[] }>
    assert.deepEqual(shown[0]?.signatures, [sig])
    assert.deepEqual((await store.queryPathInfo(info.path))?.signatures, [sig])
    assert.deepEqual((await cli.queryPathInfo(info.path))?.signatures, [sig])
  })

  it('a NAR whose hash is wrong is NarHashMismatch, the path stays invalid, the store goes on', async () => {
    const [fresh] = await freshDeleted(t => `{ x = ${shDrv(`wrong-${t}`, `echo wrong-${t} > $out`)}; }`, ['x'])
    assert.ok(fresh != null)
    const { info, nar } = fresh
    const err = await rejection(store.importNars([info], entries([[info.path, flip(nar, 'wrong-')]])), 'importNars of a corrupted NAR')
    assert.ok(err instanceof NarHashMismatch, `${err.name}: ${err.message}`)
    assert.equal(err.path, info.path)
    assert.equal((await within(store.isValid([info.path]), REQUEST_MS, 'isValid after the mismatch')).size, 0, 'the path is not valid')
    assert.equal((await cli.isValid([info.path])).size, 0, 'nor in the CLI\'s view')
    // The same store imports the right NAR next.
    await within(store.importNars([info], entries([[info.path, nar]])), REQUEST_MS, 'importNars after the mismatch')
    assert.ok((await cli.queryPathInfo(info.path))?.narHash.equals(info.narHash))
  })
})

// ---- 3. the daemon's own errors -------------------------------------------------------------

describe('DaemonStore passes on what the daemon says', { timeout: TEST_TIMEOUT }, () => {
  it('a path whose reference is not valid: the daemon\'s "path … is not valid" as PathNotValid naming the reference', async () => {
    const [x, y] = await freshDeleted(t => `let x = ${shDrv(`rx-${t}`, `echo x-${t} > $out`)}; in { inherit x; y = ${shDrv(`ry-${t}`, `echo \${x} > $out`)}; }`, ['x', 'y'])
    assert.ok(x != null && y != null)
    assert.deepEqual(y.info.references, [x.info.path])
    const err = await rejection(store.importNars([y.info], entries([[y.info.path, y.nar]])), 'importNars with a missing reference')
    assert.ok(err instanceof PathNotValid, `${err.name}: ${err.message}`)
    assert.equal(err.path, x.info.path)
    assert.ok(err.message.includes(x.info.path), err.message)
    assert.deepEqual([...await within(store.isValid([x.info.path, y.info.path]), REQUEST_MS, 'isValid after the error')], [])
    // Both, references first, go in on the same store.
    const r = await within(store.importNars([x.info, y.info], entries([[x.info.path, x.nar], [y.info.path, y.nar]])), REQUEST_MS, 'importNars of both')
    assert.deepEqual(r.imported, [x.info.path, y.info.path])
  })

  it('a content address the daemon cannot parse: DaemonError with the daemon\'s message, then the store goes on', async () => {
    // The daemon refuses this one while reading the request and then ends the connection: a store
    // of its own, so that what it leaves behind cannot fail other tests.
    const own = new DaemonStore()
    try {
      const [fresh] = await freshDeleted(t => `{ x = ${shDrv(`badca-${t}`, `echo badca-${t} > $out`)}; }`, ['x'])
      assert.ok(fresh != null)
      const err = await rejection(own.importNars([{ ...fresh.info, ca: 'bogus:sha256:xyz' }], entries([[fresh.info.path, fresh.nar]])), 'importNars with a bad ca')
      assert.equal(err.name, 'DaemonError', err.message)
      assert.match(err.message, /content address prefix 'bogus' is unrecognized/, 'the daemon\'s message, as text')
      assert.equal((await cli.isValid([fresh.info.path])).size, 0, 'nothing was registered')
      // The next requests, a query and a build, are answered as if nothing had happened.
      assert.deepEqual([...await within(own.isValid([fresh.info.path, out.a]), REQUEST_MS, 'isValid after a DaemonError')], [out.a])
      const next = await drvOf('after-daemon-error', `echo ok-${tag} > $out`)
      const { outputs } = await within(own.realise(next), BUILD_MS, 'realise after a DaemonError')
      assert.deepEqual([...await cli.isValid([outputs.out ?? ''])], [outputs.out])
    } finally {
      own.close()
    }
  })
})

// ---- 2. builds ----------------------------------------------------------------------------

describe('DaemonStore.realise', { timeout: TEST_TIMEOUT }, () => {
  it('returns the outputs; onLog gets the builder\'s lines as they come, before the build ends', async () => {
    const d = await drvOf('log', `echo first-${tag}; /bin/sleep 2; echo second-${tag} >&2; echo out-${tag} > $out; echo > $dev`, 'outputs = [ "out" "dev" ];')
    const seen: Array<{ line: string, at: number }> = []
    const { outputs } = await within(store.realise(d, { onLog: line => seen.push({ line, at: Date.now() }) }), BUILD_MS, 'realise')
    const done = Date.now()
    assert.deepEqual(outputs, await outputsOf(d))
    assert.equal((await readFile(outputs.out ?? '', 'utf8')).trim(), `out-${tag}`)
    const first = seen.find(s => s.line === `first-${tag}`)
    const second = seen.find(s => s.line === `second-${tag}`)
    assert.ok(first != null && second != null, `both lines came: ${JSON.stringify(seen.map(s => s.line))}`)
    // The builder sleeps 2 s between them: a log handed over at the end would have them together.
    assert.ok(done - first.at >= 1_000, `the first line came ${done - first.at} ms before the end`)
    assert.ok(second.at - first.at >= 1_000, 'the lines came as the builder wrote them')
  })

  it('a failing builder is a permanent failure with its log tail; the same store builds next', async () => {
    const d = await drvOf('fail', `echo about-to-fail-${tag}; echo last-line-${tag} >&2; exit 1`)
    const lines: string[] = []
    const err = await rejection(store.realise(d, { onLog: l => lines.push(l) }), 'realise of a failing build', BUILD_MS)
    assert.ok(err instanceof BuildFailure, `${err.name}: ${err.message}`)
    assert.equal(err.kind, 'permanent')
    assert.equal(err.permanent, true)
    assert.equal(err.name, 'PermanentBuildFailure')
    assert.equal(err.drvPath, d)
    assert.ok(err.logTail.includes(`last-line-${tag}`), err.logTail.join('\n'))
    assert.ok(lines.includes(`about-to-fail-${tag}`))
    assert.match(err.message, /exit code 1/, 'Nix\'s own error text is in the message')
    const next = await drvOf('after-fail', `echo ok-${tag} > $out`)
    const { outputs } = await within(store.realise(next), BUILD_MS, 'realise after a failure')
    assert.deepEqual([...await store.isValid([outputs.out ?? ''])], [outputs.out])
  })

  for (const [what, options, script] of [
    ['timeout', { timeout: 1 }, (m: string) => `echo busy-${tag}; ${m}; echo > $out`],
    ['maxSilentTime', { maxSilentTime: 1 }, (m: string) => `${m}; echo > $out`]
  ] as const) {
    it(`a builder that runs past ${what} fails as timed out, and is stopped`, async () => {
      const marker = sleepMarker(30)
      leftovers.add(marker)
      const d = await drvOf(`to-${what}`, script(marker))
      const started = Date.now()
      const err = await rejection(store.realise(d, options), `realise with ${what}`, BUILD_MS)
      assert.ok(err instanceof BuildFailure, `${err.name}: ${err.message}`)
      assert.equal(err.kind, 'timed-out')
      assert.equal(err.name, 'BuildTimedOut')
      assert.equal(err.permanent, true)
      assert.ok(Date.now() - started < 15_000, `Nix stopped the builder after ${Date.now() - started} ms, long before its 30 s`)
      await waitFor(async () => (await withMarker(marker)).length === 0, 5_000, 'the timed-out builder to be gone')
    })
  }

  it('deletePaths removes what this store just built (its own temporary roots released), and refuses a path still referenced, leaving it', async () => {
    const dep = await drvOf('del-dep', `echo dep-${tag} > $out`)
    const depOut = (await within(store.realise(dep), BUILD_MS, 'realise dep')).outputs.out ?? ''
    const top = await drvOf('del-top', `echo ${depOut} > $out`, `deps = [ (builtins.storePath ${JSON.stringify(depOut)}) ];`)
    const topOut = (await within(store.realise(top), BUILD_MS, 'realise top')).outputs.out ?? ''
    // The build's connection roots its output: plain nix-store --delete is refused now.
    const plain = await exec('nix-store', ['--delete', topOut])
    assert.notEqual(plain.code, 0, 'nix-store --delete succeeded though the build\'s connection roots the path')
    await assert.rejects(within(store.deletePaths([depOut]), REQUEST_MS, 'delete of a referenced path'), /still alive/)
    await within(store.deletePaths([topOut]), REQUEST_MS, 'deletePaths')
    assert.equal((await store.isValid([topOut])).has(topOut), false)
    // The refused one is untouched (top's .drv still references it).
    assert.equal((await store.isValid([depOut])).has(depOut), true)
  })

  it('a missing .drv is PathNotValid, not a build failure', async () => {
    const err = await rejection(store.realise(missingPath('8', '.drv')), 'realise of a missing .drv')
    assert.ok(err instanceof PathNotValid, `${err.name}: ${err.message}`)
    assert.equal(err.path, missingPath('8', '.drv'))
  })

  it('an abort mid-build is OperationAborted and the builder is gone within seconds', async () => {
    const marker = sleepMarker(59)
    leftovers.add(marker)
    const d = await drvOf('abort', `echo started-${tag}; ${marker}; echo > $out`)
    const controller = new AbortController()
    const build = store.realise(d, { signal: controller.signal })
    build.catch(() => {}) // awaited below; a failure before the abort must not be unhandled meanwhile
    await waitFor(async () => (await withMarker(marker)).length > 0, 20_000, 'the builder to start')
    controller.abort(new Error('lease lost'))
    const err = await rejection(build, 'the aborted build', 10_000)
    assert.ok(err instanceof OperationAborted, `${err.name}: ${err.message}`)
    assert.equal(err.name, 'AbortError')
    await waitFor(async () => (await withMarker(marker)).length === 0, 5_000, 'the aborted builder to be gone')
    // The store builds on.
    const next = await drvOf('after-abort', `echo ok-${tag} > $out`)
    await within(store.realise(next), BUILD_MS, 'realise after an abort')
  })
})

// ---- 4. the daemon dying mid-request --------------------------------------------------------

describe('DaemonStore when its daemon dies', { timeout: TEST_TIMEOUT }, () => {
  let lossy: DaemonStore | undefined
  after(() => { lossy?.close() })

  it('a build whose daemon is killed rejects with DaemonConnectionLost; the next request works', async () => {
    // Daemons other stores of this process run are not this test's to kill.
    const others = new Set(await daemonChildren())
    lossy = new DaemonStore()
    const marker = sleepMarker(30)
    leftovers.add(marker)
    const d = await drvOf('killed', `echo started-${tag}; ${marker}; echo > $out`)
    const build = lossy.realise(d)
    build.catch(() => {})
    await waitFor(async () => (await withMarker(marker)).length > 0, 20_000, 'the builder to start')
    const victims = (await daemonChildren()).filter(p => !others.has(p))
    assert.ok(victims.length >= 1, 'the store runs a nix-daemon --stdio of its own')
    for (const pid of victims) kill(pid)
    const err = await rejection(build, 'the build whose daemon died', 10_000)
    assert.equal(err.name, 'DaemonConnectionLost', err.message)
    assert.match(err.message, /nix-daemon/)
    assert.deepEqual([...await within(lossy.isValid([out.a]), REQUEST_MS, 'isValid after the daemon died')], [out.a])
    assert.ok(lossy.stats.lost >= 1, JSON.stringify(lossy.stats))
    // The builder that daemon left (Nix puts it in a session of its own): not ours to keep.
    for (const p of await withMarker(marker)) kill(p.pid)
  })
})

// ---- 5. a 300 MiB NAR both ways in constant memory -------------------------------------------

describe('DaemonStore streams a 300 MiB NAR both ways in constant memory', { timeout: 120_000 }, () => {
  const SIZE = 300 * MiB
  /** The NAR framing around one regular file's contents (see zeroFileNar). */
  const NAR_OVERHEAD = 112
  const RSS_LIMIT = 100 * MiB
  let big: string
  let info: PathInfo
  // The daemons that build and export the path keep it as a temp root while they live: a store
  // of its own, closed before the path is deleted.
  let bigStore: DaemonStore | undefined
  let others: Set<number>

  after(() => { bigStore?.close() })

  before(async () => {
    others = new Set(await daemonChildren())
    bigStore = new DaemonStore()
    const d = await drvOf('big', `/bin/head -c ${SIZE} /dev/zero > $out`)
    big = (await within(bigStore.realise(d), 60_000, 'the 300 MiB build')).outputs.out ?? ''
    const i = await bigStore.queryPathInfo(big)
    assert.ok(i != null)
    info = i
    assert.equal(info.narSize, SIZE + NAR_OVERHEAD)
  })

  it('exports it, every byte counted and hashed, RSS growing far less than the NAR', async () => {
    const rss = rssSampler()
    const hasher = createHash('sha256')
    let bytes = 0
    await within((async () => {
      for await (const c of (bigStore as DaemonStore).exportNar(big)) {
        hasher.update(c)
        bytes += c.length
        rss.sample()
      }
    })(), 60_000, 'the 300 MiB export')
    const grew = rss.stop()
    assert.equal(bytes, info.narSize)
    assert.ok(new Hash('sha256', hasher.digest()).equals(info.narHash), 'the exported NAR has the registered hash')
    assert.ok(grew < RSS_LIMIT, `RSS grew by ${(grew / MiB).toFixed(1)} MiB exporting a ${SIZE / MiB} MiB NAR`)
    console.log(`# export of ${SIZE / MiB} MiB: RSS peak +${(grew / MiB).toFixed(1)} MiB`)
  })

  it('imports it back from a generated stream, RSS again growing far less than the NAR', async () => {
    bigStore?.close()
    await waitFor(async () => (await daemonChildren()).every(p => others.has(p)), 5_000, 'the closed store\'s daemons to exit')
    await nix('nix-store', '--delete', big)
    assert.equal((await cli.isValid([big])).size, 0)
    const rss = rssSampler()
    const hasher = createHash('sha256')
    let bytes = 0
    async function * nar (): AsyncGenerator<Uint8Array> {
      for await (const c of zeroFileNar(SIZE, MiB)) {
        hasher.update(c)
        bytes += c.length
        rss.sample()
        yield c
      }
    }
    async function * one (): AsyncGenerator<NarEntry> { yield { path: big, nar: nar() } }
    const r = await within(store.importNars([importInfoOf(info)], one()), 60_000, 'the 300 MiB import')
    const grew = rss.stop()
    assert.deepEqual(r.imported, [big])
    assert.equal(bytes, info.narSize, 'the generated NAR is the size of the real one')
    assert.ok(new Hash('sha256', hasher.digest()).equals(info.narHash), 'the generated NAR is the real one')
    assert.ok(grew < RSS_LIMIT, `RSS grew by ${(grew / MiB).toFixed(1)} MiB importing a ${SIZE / MiB} MiB NAR`)
    console.log(`# import of ${SIZE / MiB} MiB: RSS peak +${(grew / MiB).toFixed(1)} MiB`)
    assert.ok((await cli.queryPathInfo(big))?.narHash.equals(info.narHash))
  })

  it('an export whose daemon is killed mid-NAR rejects with DaemonConnectionLost; the next request works', async () => {
    const existing = new Set(await daemonChildren())
    const lossy = new DaemonStore()
    try {
      let bytes = 0
      const reading = (async () => {
        for await (const c of lossy.exportNar(big)) {
          bytes += c.length
          // Reading stalls after the first chunk until the daemon is dead: it blocks on a full pipe.
          if (bytes === c.length) {
            const victims = (await daemonChildren()).filter(p => !existing.has(p))
            assert.ok(victims.length >= 1, 'the store runs a nix-daemon --stdio of its own')
            for (const pid of victims) kill(pid)
          }
        }
      })()
      const err = await rejection(reading, 'the export whose daemon died', 20_000)
      assert.equal(err.name, 'DaemonConnectionLost', err.message)
      assert.ok(bytes < info.narSize, `only part of the NAR came (${bytes} bytes)`)
      assert.deepEqual([...await within(lossy.isValid([big]), REQUEST_MS, 'isValid after the daemon died')], [big])
      assert.ok(lossy.stats.lost >= 1, JSON.stringify(lossy.stats))
    } finally {
      lossy.close()
    }
  })
})
