// The builder socket against the real Nix client: nix-build with the socket as its only remote
// builder, `nix path-info` / `nix copy` / nix-store against it as a store, and hostile clients
// beside a real one. The BuilderStore behind it is a small temp-dir store in this file that runs
// each BasicDerivation's builder itself.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, readdir, readlink, lstat, rename, rm, stat } from 'node:fs/promises'
import { createConnection, type Socket } from 'node:net'
import { join } from 'node:path'
import { serveBuilderSocket, type BuilderSocket } from '../../node/builder/builder-socket.ts'
import type { BuilderStore, BuildReply, BuildRequest } from '../../node/builder/builder-store.ts'
import { createLogger } from '../../node/log.ts'
import { DaemonConnection } from '../../node/nix/daemon-connection.ts'
import type { ImportBatchResult, ImportInfo, NarEntry, PathInfo } from '../../node/nix/store-backend.ts'
import {
  BuildStatus, WireWriter, WireReader, readStderr, frameHeader, FRAME_END, WORKER_MAGIC_1, PROTOCOL_VERSION, OP_IS_VALID_PATH, OP_BUILD_DERIVATION,
  STDERR_LAST, STDERR_START_ACTIVITY, STDERR_RESULT, STDERR_STOP_ACTIVITY
} from '../../protocols/nix/daemon-wire.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { encodeNar } from '../../protocols/nix/nar-encoder.ts'
import { NarHasher, narDigestOfPath, tapNarHash } from '../../protocols/nix/nar-hash.ts'
import { restoreNar } from '../../protocols/nix/nar-restore.ts'
import { storePathHashPart } from '../../protocols/nix/store-path.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'
import { waitFor, within } from '../helpers/wait.ts'

const COMMAND_TIMEOUT_MS = 120_000
const CLOSE_BOUND_MS = 5_000
/** Short deadlines, so the hostile cases finish quickly; the defaults are 10 s and 60 s. */
const HANDSHAKE_MS = 1_500
const SILENCE_MS = 1_500
const SYSTEM = `${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux`

/** A store in a temp dir: `<root>/nix/store/<base>` on disk, registrations in memory. */
class TempDirStore implements BuilderStore {
  readonly infos = new Map<string, PathInfo>()
  readonly builds: BuildRequest[] = []
  readonly imports: string[] = []
  /** Builds whose signal aborted, by drv path. */
  readonly aborted: string[] = []
  private readonly root: string

  constructor (root: string) { this.root = root }

  real (path: string): string { return join(this.root, path) }

  async queryPathInfo (path: string): Promise<PathInfo | null> { return this.infos.get(path) ?? null }

  async isValid (paths: string[]): Promise<Set<string>> { return new Set(paths.filter(p => this.infos.has(p))) }

  async importNars (infos: ImportInfo[], nars: AsyncIterable<NarEntry>): Promise<ImportBatchResult> {
    const imported: string[] = []
    let i = 0
    for await (const entry of nars) {
      const info = infos[i++]
      assert.ok(info != null && info.path === entry.path, 'one NAR per info, in order')
      const hasher = new NarHasher()
      const staging = join(this.root, 'staging', randomBytes(6).toString('hex'))
      await mkdir(join(this.root, 'staging'), { recursive: true })
      await restoreNar(tapNarHash(entry.nar, hasher), staging)
      const got = hasher.digest()
      if (!got.narHash.equals(info.narHash) || got.narSize !== info.narSize) {
        await rm(staging, { recursive: true, force: true })
        throw new Error(`NAR hash mismatch importing path '${info.path}': expected ${info.narHash.toNix32()}, got ${got.narHash.toNix32()}`)
      }
      await rm(this.real(info.path), { recursive: true, force: true })
      await rename(staging, this.real(info.path))
      this.infos.set(info.path, { signatures: [], ...info })
      this.imports.push(info.path)
      imported.push(info.path)
    }
    return { imported }
  }

  exportNar (path: string): AsyncIterable<Uint8Array> { return encodeNar(this.real(path)) }

  async build (request: BuildRequest, onLog: (line: string) => void, signal: AbortSignal): Promise<BuildReply> {
    this.builds.push(request)
    const startTime = Math.floor(Date.now() / 1000)
    const { derivation: drv } = request
    const top = join(this.root, 'build', randomBytes(6).toString('hex'))
    await mkdir(top, { recursive: true })
    const outputs = Object.entries(drv.outputs).map(([name, o]) => ({ name, path: o.path }))
    const env: Record<string, string> = {
      ...drv.env,
      ...Object.fromEntries(outputs.map(o => [o.name, this.real(o.path)])),
      NIX_BUILD_TOP: top, TMPDIR: top, HOME: '/homeless-shelter', PATH: '/path-not-set', NIX_STORE: '/nix/store'
    }
    const child = spawn(drv.builder, drv.args, { cwd: top, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    const onAbort = (): void => { this.aborted.push(request.drvPath); try { if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL') } catch { /* gone */ } }
    signal.addEventListener('abort', onAbort, { once: true })
    const tail: string[] = []
    const lines = (stream: NodeJS.ReadableStream): void => {
      let partial = ''
      stream.on('data', (d: Buffer) => {
        const parts = (partial + d.toString()).split('\n')
        partial = parts.pop() ?? ''
        for (const l of parts) { onLog(l); tail.push(l) }
      })
      stream.on('end', () => { if (partial !== '') { onLog(partial); tail.push(partial) } })
    }
    if (child.stdout != null) lines(child.stdout)
    if (child.stderr != null) lines(child.stderr)
    const code = await new Promise<number>(resolve => { child.on('close', (c) => { resolve(c ?? 1) }); child.on('error', () => { resolve(127) }) })
    signal.removeEventListener('abort', onAbort)
    await rm(top, { recursive: true, force: true })
    const stopTime = Math.floor(Date.now() / 1000)
    if (code !== 0) {
      return { status: BuildStatus.PermanentFailure, errorMsg: `meshbuild test builder: ${request.drvPath} exited with code ${code}; last line: ${tail.at(-1) ?? ''}`, timesBuilt: 1, startTime, stopTime }
    }
    for (const o of outputs) {
      const { narHash, narSize } = await narDigestOfPath(this.real(o.path))
      const references = await this.referencesOf(this.real(o.path), [...this.infos.keys(), ...drv.inputSrcs, ...outputs.map(x => x.path)])
      this.infos.set(o.path, { path: o.path, narHash, narSize, references, signatures: [], deriver: request.drvPath })
    }
    return { status: BuildStatus.Built, errorMsg: '', timesBuilt: 1, startTime, stopTime }
  }

  /** The candidates whose hash part occurs in the tree at `dir`, as Nix's reference scan finds them. */
  private async referencesOf (dir: string, candidates: string[]): Promise<string[]> {
    const texts: string[] = []
    const walk = async (p: string): Promise<void> => {
      const st = await lstat(p)
      if (st.isSymbolicLink()) texts.push(await readlink(p))
      else if (st.isDirectory()) for (const e of await readdir(p)) await walk(join(p, e))
      else texts.push((await readFile(p)).toString('latin1'))
    }
    await walk(dir)
    return [...new Set(candidates)].filter(c => texts.some(t => t.includes(storePathHashPart(c)))).sort()
  }
}

interface RunResult { code: number | null, stdout: string, stderr: string }

/** Runs a command in its own process group, killed whole on timeout or when it ends. */
async function run (cmd: string, args: string[], timeoutMs = COMMAND_TIMEOUT_MS): Promise<RunResult> {
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const killGroup = (): void => { try { if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL') } catch { /* gone */ } }
  const timer = setTimeout(killGroup, timeoutMs)
  try {
    const code = await new Promise<number | null>(resolve => { child.on('close', (c) => { resolve(c) }); child.on('error', () => { resolve(127) }) })
    return { code, stdout, stderr }
  } finally {
    clearTimeout(timer)
    killGroup()
  }
}

/** Resolves once the server has closed `socket` (the bytes it sent before, if any, collected). */
async function closedWithin (socket: Socket, ms: number, what: string): Promise<Buffer> {
  const got: Buffer[] = []
  socket.on('data', (d: Buffer) => got.push(d))
  socket.on('error', () => {})
  await within(new Promise<void>(resolve => { if (socket.destroyed) resolve(); else socket.once('close', () => { resolve() }) }), ms, `the server to close ${what}`)
  return Buffer.concat(got)
}

async function connect (path: string): Promise<Socket> {
  const s = createConnection(path)
  await within(new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject) }), CLOSE_BOUND_MS, 'connecting')
  return s
}

/** A client handshake by hand: magic, version, no affinity, no reserve-space; reads to STDERR_LAST. */
async function handshake (s: Socket): Promise<WireReader> {
  const reader = new WireReader(s[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>)
  s.write(new WireWriter().u64(WORKER_MAGIC_1).toBytes())
  await reader.readU64('server magic')
  await reader.readU64('server version')
  s.write(new WireWriter().u64(PROTOCOL_VERSION).u64(0).u64(0).toBytes())
  await reader.readString('nix version')
  assert.equal(await reader.readU64('last'), STDERR_LAST)
  return reader
}

/** BuildDerivation (36) of a one-output /bin/sh derivation, as remote-store.cc writes it. */
function buildDerivationRequest (drvPath: string, out: string, script: string): Uint8Array {
  return new WireWriter().u64(OP_BUILD_DERIVATION).string(drvPath)
    .u64(1).string('out').string(out).string('').string('')
    .strings([]).string(SYSTEM).string('/bin/sh').strings(['-c', script])
    .u64(1).string('out').string(out).u64(0).toBytes()
}

/** Logger::Fields: a count, then per field its type (0 int, 1 string) and value. */
async function readFields (r: WireReader): Promise<Array<number | string>> {
  const out: Array<number | string> = []
  const count = await r.readU64('fields')
  for (let i = 0; i < count; i++) out.push((await r.readU64('type')) === 0 ? await r.readU64('int') : await r.readString('string'))
  return out
}

describe('the builder socket serves Nix\'s build-remote', { timeout: 600_000 }, () => {
  let dir: string
  let cleanup: () => Promise<void>
  let root: string
  let sock: string
  let store: TempDirStore
  let server: BuilderSocket
  const logLines: string[] = []
  const tag = randomBytes(8).toString('hex')
  const storeUri = (): string => `unix://${sock}?root=${root}`
  const builders = (): string => `${storeUri()} ${SYSTEM} - 4 1`
  const remoteBuild = async (drvs: string[], extra: string[] = []): Promise<RunResult> => await run('nix-build', [
    ...drvs, '--no-out-link', '--max-jobs', '0',
    '--option', 'builders', builders(), '--option', 'substituters', '', '--option', 'builders-use-substitutes', 'false', ...extra
  ])

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-builder-socket-'))
    await chmod(dir, 0o755) // so that (e) tests the socket's own mode, not its directory's
    root = join(dir, 'root')
    await mkdir(join(root, 'nix', 'store'), { recursive: true })
    sock = join(dir, 'builder.sock')
    store = new TempDirStore(root)
    server = await serveBuilderSocket({
      path: sock, store, log: createLogger('test', 'debug', (l) => { logLines.push(l) }), handshakeTimeoutMs: HANDSHAKE_MS, requestSilenceMs: SILENCE_MS
    })
  })
  after(async () => {
    await server?.close()
    await cleanup?.()
  })

  it('(a) builds a DAG of three derivations through build-remote, logs reaching nix-build', async () => {
    const expr = `let
      src = builtins.toFile "src-${tag}" "source text ${tag}\\n";
      a = ${shDrv(`a-${tag}`, 'echo "log line from a"; echo a-out > $out', `tag = "${tag}";`)};
      b = ${shDrv(`b-${tag}`, 'echo "log line from b"; read x < ${a}; read y < ${src}; echo "$x+$y" > $out', `inherit a src; tag = "${tag}";`)};
      c = ${shDrv(`c-${tag}`, 'read x < ${b}; echo "c sees $x" > $out', `inherit b; tag = "${tag}";`)};
    in { inherit a b c; }`
    const [drvC] = await instantiate(expr, dir, ['c'])
    assert.ok(drvC != null)
    const r = await remoteBuild([drvC])
    assert.equal(r.code, 0, `nix-build failed: ${r.stderr}`)
    const out = r.stdout.trim()
    assert.equal((await readFile(out, 'utf8')).trim(), `c sees a-out+source text ${tag}`)
    const valid = await run('nix-store', ['--check-validity', out])
    assert.equal(valid.code, 0, valid.stderr)
    assert.deepEqual(store.builds.map(b => b.drvPath.replace(/^.*-([abc])-[0-9a-f]+\.drv$/, '$1')), ['a', 'b', 'c'])
    assert.ok(store.imports.some(p => p.endsWith(`-src-${tag}`)), `the source was uploaded: ${store.imports.join(', ')}`)
    assert.match(r.stderr, /log line from a/)
    assert.match(r.stderr, /log line from b/)
  })

  it('(b) a failing builder fails nix-build with the errorMsg returned', async () => {
    const [drv] = await instantiate(shDrv(`fails-${tag}`, 'echo "about to fail"; exit 1', `tag = "${tag}";`), dir)
    assert.ok(drv != null)
    const r = await remoteBuild([drv])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /meshbuild test builder: .* exited with code 1; last line: about to fail/)
    assert.ok(store.builds.some(b => b.drvPath === drv))
    logLines.push(`(b) nix-build exit ${r.code}; stderr:\n${r.stderr}`)
  })

  it('passes --timeout through SetOptions to the build', async () => {
    const [drv] = await instantiate(shDrv(`timeout-${tag}`, 'echo ok > $out', `tag = "${tag}";`), dir)
    assert.ok(drv != null)
    const r = await remoteBuild([drv], ['--timeout', '7', '--max-silent-time', '5'])
    assert.equal(r.code, 0, r.stderr)
    const build = store.builds.find(b => b.drvPath === drv)
    assert.ok(build != null)
    logLines.push(`timeout options seen: ${JSON.stringify(build.options)}`)
    assert.equal(build.options.maxSilentTime, 5)
    assert.equal(build.options.timeout, 7)
  })

  it('(c) nix path-info and nix copy work against the socket as a store', async () => {
    // Evaluating builtins.toFile adds the file to the machine's store: a valid path to copy.
    const evaluated = await run('nix-instantiate', ['--eval', '--read-write-mode', '-E', `builtins.toFile "copied-${tag}" "copy me ${tag}"`])
    const path = JSON.parse(evaluated.stdout.trim()) as string
    assert.ok(path.endsWith(`-copied-${tag}`), evaluated.stderr)
    const copy = await run('nix', ['--extra-experimental-features', 'nix-command', 'copy', '--option', 'substituters', '', '--to', storeUri(), path])
    assert.equal(copy.code, 0, copy.stderr)
    assert.equal(await readFile(store.real(path), 'utf8'), `copy me ${tag}`)
    const local = await run('nix-store', ['-q', '--hash', path])
    const info = await run('nix', ['--extra-experimental-features', 'nix-command', 'path-info', '--json', '--store', storeUri(), path])
    assert.equal(info.code, 0, info.stderr)
    const parsed = JSON.parse(info.stdout) as Array<{ path: string, narHash: string, narSize: number }>
    assert.equal(parsed[0]?.path, path)
    assert.ok(Hash.parse(parsed[0]?.narHash ?? '').equals(Hash.parse(local.stdout.trim())), `${parsed[0]?.narHash} vs ${local.stdout}`)
    const missing = await run('nix', ['--extra-experimental-features', 'nix-command', 'path-info', '--store', storeUri(), `/nix/store/${'0'.repeat(32)}-absent-${tag}`])
    assert.notEqual(missing.code, 0)
    assert.match(missing.stderr, /is not valid/)
  })

  it('AddToStoreNar: a good NAR is imported, a wrong hash is refused and the connection goes on', async () => {
    const src = join(dir, `nar-src-${tag}`)
    await mkdir(src)
    await run('sh', ['-c', `echo hello > ${src}/f`])
    const digest = await narDigestOfPath(src)
    const good = `/nix/store/${'1'.repeat(32)}-nar-${tag}`
    const bad = `/nix/store/${'2'.repeat(32)}-nar-${tag}`
    const c = await DaemonConnection.open({ socketPath: sock })
    try {
      await assert.rejects(c.addToStoreNar({ path: bad, narHash: Hash.of('sha256', 'other'), narSize: digest.narSize, references: [] }, encodeNar(src)),
        (err: Error) => err.name === 'DaemonError' && /NAR hash mismatch importing path/.test(err.message))
      await c.addToStoreNar({ path: good, ...digest, references: [] }, encodeNar(src))
      assert.deepEqual(await c.isValid([good, bad]), new Set([good]))
      const info = await c.queryPathInfo(good)
      assert.ok(info?.narHash.equals(digest.narHash))
      assert.equal(await readFile(join(store.real(good), 'f'), 'utf8'), 'hello\n')
      const chunks: Uint8Array[] = []
      for await (const chunk of c.narFromPath(good)) chunks.push(chunk)
      const hasher = new NarHasher()
      for (const ch of chunks) hasher.update(ch)
      assert.ok(hasher.digest().narHash.equals(digest.narHash), 'NarFromPath returns the NAR')
    } finally {
      c.close()
    }
  })

  it('(d) garbage gets its connection closed within a bound while a real client is served', async () => {
    const random = await connect(sock)
    random.write(randomBytes(64))
    const wrongMagic = await connect(sock)
    wrongMagic.write(new WireWriter().u64(0x12345678).toBytes())
    const huge = await connect(sock)
    await handshake(huge)
    huge.write(new WireWriter().u64(OP_IS_VALID_PATH).u64(2 ** 40).toBytes())
    const silent = await connect(sock)
    const midRequest = await connect(sock)
    await handshake(midRequest)
    midRequest.write(new WireWriter().u64(OP_IS_VALID_PATH).u64(40).toBytes().slice(0, 12))

    // A real client meanwhile, on its own connection.
    const [path] = store.imports
    assert.ok(path != null)
    const q = await run('nix-store', ['--store', storeUri(), '-q', '--hash', path])
    assert.equal(q.code, 0, q.stderr)

    await closedWithin(random, CLOSE_BOUND_MS, 'random bytes')
    await closedWithin(wrongMagic, CLOSE_BOUND_MS, 'a wrong magic')
    await closedWithin(huge, CLOSE_BOUND_MS, 'a huge string length')
    await closedWithin(silent, HANDSHAKE_MS + CLOSE_BOUND_MS, 'a silent client')
    await closedWithin(midRequest, SILENCE_MS + CLOSE_BOUND_MS, 'a client silent mid-request')
    const warned = logLines.join('')
    assert.match(warned, /client magic: expected 0x6e697863/)
    assert.match(warned, /path: length 1099511627776 exceeds the limit/)
    assert.match(warned, /did not complete the handshake/)
    assert.match(warned, /fell silent for 1500 ms in the middle of a request/)
    const again = await run('nix-store', ['--store', storeUri(), '-q', '--hash', path])
    assert.equal(again.code, 0, again.stderr)
  })

  it('streams a build\'s log as it comes: one build activity, a result per line, then the BuildResult', async () => {
    const drvPath = `/nix/store/${'6'.repeat(32)}-streamer-${tag}.drv`
    const out = `/nix/store/${'7'.repeat(32)}-streamer-${tag}`
    const s = await connect(sock)
    try {
      const r = await handshake(s)
      const sentAt = Date.now()
      s.write(buildDerivationRequest(drvPath, out, 'echo first; /bin/sleep 1; echo second; echo done > $out'))
      const seen: Array<{ what: string, at: number }> = []
      for (;;) {
        const code = await within(r.readU64('code'), 10_000, 'a stderr message')
        if (code === STDERR_LAST) break
        if (code === STDERR_START_ACTIVITY) {
          const [, level, type, text] = [await r.readU64('id'), await r.readU64('level'), await r.readU64('type'), await r.readString('text')]
          const fields = await readFields(r)
          await r.readU64('parent')
          seen.push({ what: `start ${type} ${level} ${text} ${JSON.stringify(fields)}`, at: Date.now() })
        } else if (code === STDERR_RESULT) {
          await r.readU64('id')
          const type = await r.readU64('type')
          seen.push({ what: `result ${type} ${JSON.stringify(await readFields(r))}`, at: Date.now() })
        } else if (code === STDERR_STOP_ACTIVITY) {
          await r.readU64('id')
          seen.push({ what: 'stop', at: Date.now() })
        } else {
          assert.fail(`unexpected stderr code 0x${code.toString(16)}`)
        }
      }
      assert.deepEqual(seen.map(x => x.what), [
        `start 105 3 building '${drvPath}' ${JSON.stringify([drvPath, '', 1, 1])}`, 'result 101 ["first"]', 'result 101 ["second"]', 'stop'
      ])
      assert.ok((seen[2]?.at ?? 0) - (seen[1]?.at ?? 0) >= 800, 'the first line came before the builder slept, not with the rest')
      assert.equal(await r.readU64('status'), BuildStatus.Built)
      assert.equal(await r.readString('errorMsg'), '')
      assert.equal(await r.readU64('timesBuilt'), 1)
      await r.readBool('nondeterministic')
      assert.ok(await r.readU64('startTime') >= Math.floor(sentAt / 1000) - 1)
      await r.readU64('stopTime')
      assert.equal(await r.readU64('builtOutputs'), 0)
      assert.equal(await readFile(store.real(out), 'utf8'), 'done\n')
    } finally {
      s.destroy()
    }
  })

  it('AddMultipleToStore with a wrong hash or a broken NAR: the client is told and the connection stays in step', async () => {
    const src = join(dir, `multi-src-${tag}`)
    await mkdir(src)
    const chunks: Uint8Array[] = []
    for await (const c of encodeNar(src)) chunks.push(Buffer.from(c))
    const nar = Buffer.concat(chunks)
    const path = `/nix/store/${'8'.repeat(32)}-multi-${tag}`
    const info = new WireWriter().string(path).string('').string('0'.repeat(64)).strings([]).u64(0).u64(nar.length).bool(false).strings([]).string('').toBytes()
    const stream = Buffer.concat([new WireWriter().u64(1).toBytes(), info, nar])
    const s = await connect(sock)
    try {
      const r = await handshake(s)
      s.write(Buffer.concat([new WireWriter().u64(44).bool(false).bool(true).toBytes(), frameHeader(stream.length), stream, FRAME_END]))
      await assert.rejects(within(readStderr(r), 10_000, 'the reply'), (err: Error) => err.name === 'DaemonError' && /NAR hash mismatch importing path/.test(err.message))
      // A NAR that is not one, inside well-formed frames: told too, and the stream goes on.
      const garbage = Buffer.concat([new WireWriter().u64(1).toBytes(), info, new WireWriter().string('not-a-nar').toBytes()])
      s.write(Buffer.concat([new WireWriter().u64(44).bool(false).bool(true).toBytes(), frameHeader(garbage.length), garbage, FRAME_END]))
      await assert.rejects(within(readStderr(r), 10_000, 'the reply'), (err: Error) => err.name === 'DaemonError' && /AddMultipleToStore's stream: NAR magic/.test(err.message))
      s.write(new WireWriter().u64(OP_IS_VALID_PATH).string(path).toBytes())
      await within(readStderr(r), 10_000, 'the next reply')
      assert.equal(await r.readBool('valid'), false)
    } finally {
      s.destroy()
    }
  })

  it('a client that disconnects mid-build gets its build aborted', async () => {
    const drvPath = `/nix/store/${'4'.repeat(32)}-sleeper-${tag}.drv`
    const out = `/nix/store/${'5'.repeat(32)}-sleeper-${tag}`
    const s = await connect(sock)
    await handshake(s)
    s.write(buildDerivationRequest(drvPath, out, 'echo started; exec /bin/sleep 60'))
    await waitFor(() => store.builds.some(b => b.drvPath === drvPath), CLOSE_BOUND_MS, 'the build to start')
    s.destroy()
    await waitFor(() => store.aborted.includes(drvPath), CLOSE_BOUND_MS, 'the build to be aborted')
  })

  it('(e) the socket is 0600: root is served, another user refused', async () => {
    assert.equal((await stat(sock)).mode & 0o777, 0o600)
    const [path] = store.imports
    assert.ok(path != null)
    const asNobody = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'env', 'HOME=/tmp', 'nix-store', '--store', storeUri(), '-q', '--hash', path])
    assert.notEqual(asNobody.code, 0)
    assert.match(asNobody.stderr, /Permission denied/)
    const asRoot = await run('nix-store', ['--store', storeUri(), '-q', '--hash', path])
    assert.equal(asRoot.code, 0, asRoot.stderr)
  })

  it('(f) an operation it does not serve gives the client a clear error', async () => {
    const r = await run('nix-store', ['--store', storeUri(), '--gc', '--print-roots'])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /the meshbuild builder socket does not serve operation FindRoots/)
  })

  it('refuses to start on a path another server answers on, and survives all of the above', async () => {
    await assert.rejects(serveBuilderSocket({ path: sock, store, log: createLogger('test', 'error', () => {}) }),
      { name: 'SocketInUse', message: /another process is serving/ })
    const r = await run('nix-store', ['--store', storeUri(), '-q', '--hash', store.imports[0] ?? ''])
    assert.equal(r.code, 0, r.stderr)
  })

  it('replaces a stale socket file; close() ends its connections and removes the socket', async () => {
    const stale = join(dir, 'stale.sock')
    // A socket file bound and never listened on: nobody answers there.
    const bound = await run('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(stale)})`])
    assert.equal(bound.code, 0, bound.stderr)
    assert.ok((await lstat(stale)).isSocket())
    const second = await serveBuilderSocket({ path: stale, store, log: createLogger('test', 'error', () => {}) })
    const client = await connect(stale)
    await handshake(client)
    await waitFor(() => second.connections === 1, CLOSE_BOUND_MS, 'the connection to be counted')
    await within(second.close(), CLOSE_BOUND_MS, 'close()')
    await closedWithin(client, CLOSE_BOUND_MS, 'a connection at close()')
    assert.equal(second.connections, 0)
    await assert.rejects(lstat(stale), { code: 'ENOENT' })
  })
})
