// End to end: meshbuild installed as a user installs it. `npm pack` the checkout, `npm install -g
// --prefix` a temporary directory from the tarball (npm's defaults: no install scripts run), then
// run the installed command from outside the checkout: on the pinned Node 24, and on the machine's
// old Node, which must be told in one line what it lacks. The shipped systemd unit is checked with
// systemd-analyze where the machine has it.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, realpathSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { waitForOutput } from '../helpers/test-hosts.ts'
import { within } from '../helpers/wait.ts'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const PINNED_BIN = join(ROOT, 'node_modules', '.bin')
/** The Node the package needs (package.json "engines"); bin/meshbuild.js checks the same. */
const NEEDED_NODE: [number, number] = [22, 18]
const USAGE_EXIT_CODE = 2
// npm install fetches ~160 packages (from its cache when it can); generous for a shared 2-core machine.
const PACK_TIMEOUT_MS = 120_000
const INSTALL_TIMEOUT_MS = 240_000
const COMMAND_TIMEOUT_MS = 30_000
const JOIN_READY_TIMEOUT_MS = 60_000
const JOIN_STOP_TIMEOUT_MS = 30_000

interface RunResult { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string }

/** The caller's environment without what npm and node --test put there for their own children. */
function cleanEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) || k === 'INIT_CWD' || k === 'NODE_TEST_CONTEXT' || k === 'NODE_OPTIONS') continue
    if (k === 'STATE_DIRECTORY' || k.startsWith('MESHBUILD_')) continue
    env[k] = v
  }
  return { ...env, ...extra }
}

function pathWithout (dir: string): string[] {
  return (process.env.PATH ?? '').split(delimiter).filter(d => d !== '' && d !== dir)
}

function track (child: ChildProcess, children: Set<ChildProcess>): void {
  children.add(child)
  child.on('exit', () => { children.delete(child) })
}

function killGroup (child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  try { process.kill(-child.pid, signal) } catch { /* already gone */ }
}

/** Runs a command as leader of its own process group; the group is killed on timeout. */
async function run (cmd: string, args: string[], opts: { cwd: string, env: NodeJS.ProcessEnv, timeoutMs?: number }, children: Set<ChildProcess>): Promise<RunResult> {
  const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  track(child, children)
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString('utf8') })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString('utf8') })
  const done = new Promise<RunResult>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => { resolve({ code, signal, stdout, stderr }) })
  })
  const timeoutMs = opts.timeoutMs ?? COMMAND_TIMEOUT_MS
  try {
    return await within(done, timeoutMs, `${cmd} ${args.join(' ')}`)
  } catch (err) {
    killGroup(child, 'SIGKILL')
    throw new Error(`${(err as Error).message}; stdout ${JSON.stringify(stdout.slice(-1000))}, stderr ${JSON.stringify(stderr.slice(-1000))}`)
  }
}

function describeRun (r: RunResult): string {
  return `exit ${r.code ?? r.signal}; stdout ${JSON.stringify(r.stdout.slice(-2000))}; stderr ${JSON.stringify(r.stderr.slice(-2000))}`
}

function olderThanNeeded (version: string): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number)
  return major < NEEDED_NODE[0] || (major === NEEDED_NODE[0] && minor < NEEDED_NODE[1])
}

/** The machine's own Nodes older than NEEDED_NODE: every `node` on PATH but the pinned one. */
async function oldNodes (children: Set<ChildProcess>, cwd: string): Promise<Array<{ path: string, version: string }>> {
  const pinned = realpathSync(join(PINNED_BIN, 'node'))
  const found: Array<{ path: string, version: string }> = []
  const seen = new Set<string>([pinned])
  for (const dir of [...pathWithout(PINNED_BIN), '/usr/bin', '/usr/local/bin']) {
    const candidate = join(dir, 'node')
    if (!existsSync(candidate)) continue
    const real = realpathSync(candidate)
    if (seen.has(real)) continue
    seen.add(real)
    const r = await run(candidate, ['-p', 'process.versions.node'], { cwd, env: cleanEnv() }, children)
    const version = r.stdout.trim()
    if (r.code === 0 && olderThanNeeded(version)) found.push({ path: candidate, version })
  }
  return found
}

describe('npm install -g from the packed tarball', { timeout: PACK_TIMEOUT_MS + INSTALL_TIMEOUT_MS + 5 * 60_000 }, () => {
  const children = new Set<ChildProcess>()
  let tmp = ''
  let prefix = ''
  let outside = ''
  let installed = ''
  let version = ''
  /** PATH for the installed command on a new enough Node: the prefix's bin, then the pinned Node. */
  let goodEnv: NodeJS.ProcessEnv = {}

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'mb-install-'))
    prefix = join(tmp, 'prefix')
    outside = join(tmp, 'outside')
    await mkdir(outside)
    await mkdir(join(tmp, 'pack'))
    version = (JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version
    const npmEnv = cleanEnv({ PATH: [PINNED_BIN, ...pathWithout(PINNED_BIN)].join(delimiter) })
    const started = Date.now()
    // The pack builds dist/ (prepack) with the checkout's TypeScript, as `npm publish` would.
    const pack = await run('npm', ['pack', '--pack-destination', join(tmp, 'pack')], { cwd: ROOT, env: npmEnv, timeoutMs: PACK_TIMEOUT_MS }, children)
    assert.equal(pack.code, 0, `npm pack: ${describeRun(pack)}`)
    const tarballs = (await readdir(join(tmp, 'pack'))).filter(f => f.endsWith('.tgz'))
    assert.deepEqual(tarballs, [`meshbuild-${version}.tgz`])
    const packed = Date.now()
    // As the README says, from outside the checkout; --prefer-offline takes what npm's cache has.
    const install = await run('npm', ['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', join(tmp, 'pack', tarballs[0] ?? '')],
      { cwd: outside, env: npmEnv, timeoutMs: INSTALL_TIMEOUT_MS }, children)
    assert.equal(install.code, 0, `npm install -g: ${describeRun(install)}`)
    process.stderr.write(`# npm pack ${packed - started} ms, npm install -g ${Date.now() - packed} ms\n`)
    installed = join(prefix, 'lib', 'node_modules', 'meshbuild')
    goodEnv = cleanEnv({ PATH: [join(prefix, 'bin'), PINNED_BIN, ...pathWithout(PINNED_BIN)].join(delimiter) })
  })

  after(async () => {
    for (const child of children) killGroup(child, 'SIGKILL')
    if (tmp !== '') await rm(tmp, { recursive: true, force: true })
  })

  it('installs the compiled command and the unit, without sources and without a Node of its own', async () => {
    assert.deepEqual(await readdir(join(prefix, 'bin')), ['meshbuild'], 'the package puts only meshbuild on PATH, no node')
    assert.ok(existsSync(join(installed, 'dist', 'node', 'cli', 'main.js')), 'dist/ is in the package')
    assert.ok(existsSync(join(installed, 'systemd', 'meshbuild.service')), 'the systemd unit is in the package')
    assert.ok(!existsSync(join(installed, 'node', 'cli', 'main.ts')), 'no TypeScript sources in the package')
    assert.ok(!existsSync(join(installed, 'node_modules', 'node')), 'the pinned Node (npm package node) is not a run-time dependency')
  })

  it('runs --version and key generate from outside the checkout', async () => {
    const v = await run('meshbuild', ['--version'], { cwd: outside, env: goodEnv }, children)
    assert.equal(v.code, 0, describeRun(v))
    assert.equal(v.stdout.trim(), version)
    const k = await run('meshbuild', ['key', 'generate', 'install-test-1', '--secret-file', 'k.sec', '--public-file', 'k.pub'], { cwd: outside, env: goodEnv }, children)
    assert.equal(k.code, 0, describeRun(k))
    const pub = (await readFile(join(outside, 'k.pub'), 'utf8')).trim()
    assert.match(pub, /^install-test-1:[A-Za-z0-9+/]{43}=$/)
    assert.equal(k.stdout.trim(), pub)
    assert.equal((await stat(join(outside, 'k.sec'))).mode & 0o777, 0o600)
  })

  it('joins on loopback and answers status --json, also through systemd\'s $STATE_DIRECTORY', async () => {
    const dataDir = join(tmp, 'data')
    const secretFile = join(tmp, 'mesh.secret')
    await writeFile(secretFile, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600 })
    await chmod(secretFile, 0o600)
    const joinProc = spawn('meshbuild', ['join', '--listen', '/ip4/127.0.0.1/tcp/0', '--no-mdns', '--data-dir', dataDir, '--mesh-secret-file', secretFile],
      { cwd: outside, env: goodEnv, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    track(joinProc, children)
    let log = ''
    joinProc.stderr.on('data', (d: Buffer) => { log += d.toString('utf8') })
    const exited = new Promise<number | null>(resolve => { joinProc.on('exit', code => { resolve(code) }) })
    try {
      const ready = await waitForOutput(joinProc, /node (\S+) ready; control socket/, { stream: 'stderr', timeoutMs: JOIN_READY_TIMEOUT_MS })
      const peerId = ready[1]
      const s = await run('meshbuild', ['status', '--json', '--data-dir', dataDir], { cwd: outside, env: goodEnv }, children)
      assert.equal(s.code, 0, describeRun(s))
      const status = JSON.parse(s.stdout) as { self: { peerId: string }, peers: unknown[] }
      assert.equal(status.self.peerId, peerId)
      assert.deepEqual(status.peers, [])
      // As the unit runs it: no --data-dir, systemd's StateDirectory= in $STATE_DIRECTORY.
      const viaState = await run('meshbuild', ['status', '--json'], { cwd: outside, env: { ...goodEnv, STATE_DIRECTORY: dataDir } }, children)
      assert.equal(viaState.code, 0, describeRun(viaState))
      assert.equal((JSON.parse(viaState.stdout) as { self: { peerId: string } }).self.peerId, peerId)
      // SIGTERM, as systemd stops the unit: a clean stop, exit 0.
      killGroup(joinProc, 'SIGTERM')
      const code = await within(exited, JOIN_STOP_TIMEOUT_MS, 'join to stop on SIGTERM')
      assert.equal(code, 0, `join exit code after SIGTERM; log ${JSON.stringify(log.slice(-2000))}`)
      assert.match(log, /SIGTERM: stopping/)
    } finally {
      killGroup(joinProc, 'SIGKILL')
    }
  })

  it('on the machine\'s old Node prints one line saying which Node it needs, exit code 2, no stack trace', async (t) => {
    const old = await oldNodes(children, outside)
    const first = old[0]
    if (first === undefined) {
      t.skip(`no Node older than ${NEEDED_NODE.join('.')} on this machine besides the pinned one`)
      return
    }
    // Only the old Node on PATH after the prefix, as on a machine that never ran npm install here.
    const env = cleanEnv({ PATH: [join(prefix, 'bin'), dirname(first.path), ...pathWithout(PINNED_BIN)].join(delimiter) })
    for (const args of [['--version'], ['join', '--no-mdns', '--data-dir', join(tmp, 'old-node-data')]]) {
      const r = await run('meshbuild', args, { cwd: outside, env }, children)
      assert.equal(r.code, USAGE_EXIT_CODE, describeRun(r))
      assert.equal(r.stdout, '')
      const lines = r.stderr.split('\n').filter(l => l !== '')
      assert.equal(lines.length, 1, `one line, got ${JSON.stringify(r.stderr)}`)
      const line = lines[0] ?? ''
      assert.match(line, new RegExp(`needs Node\\.js >= ${NEEDED_NODE[0]}\\.${NEEDED_NODE[1]}`))
      assert.ok(line.includes(`v${first.version}`), `names the Node found (v${first.version}): ${line}`)
      assert.match(line, /https:\/\/nodejs\.org/)
      assert.doesNotMatch(r.stderr, /^\s+at /m)
    }
    assert.ok(!existsSync(join(tmp, 'old-node-data')), 'nothing ran before the check')
  })

  it('ships a systemd unit that systemd-analyze verify accepts', async (t) => {
    const unit = await readFile(join(installed, 'systemd', 'meshbuild.service'), 'utf8')
    const settings = new Set(unit.split('\n').map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#')))
    for (const line of ['ExecStart=meshbuild join', 'StateDirectory=meshbuild', 'Environment=MESHBUILD_MESH_SECRET_FILE=/etc/meshbuild/mesh.secret',
      'KillSignal=SIGTERM', 'KillMode=mixed', 'Restart=on-failure', 'RestartPreventExitStatus=2', 'StandardError=journal']) {
      assert.ok(settings.has(line), `the unit has ${line}`)
    }
    const probe = await run('sh', ['-c', 'command -v systemd-analyze'], { cwd: outside, env: cleanEnv() }, children)
    if (probe.code !== 0) {
      t.skip('systemd-analyze is not installed (Debian package systemd)')
      return
    }
    // systemd looks `meshbuild` up in /usr/local/bin, /usr/bin, ...; here it is in the prefix.
    const dir = join(tmp, 'unit')
    await mkdir(dir)
    const file = join(dir, 'meshbuild.service')
    await writeFile(file, unit.replace(/^ExecStart=meshbuild /m, `ExecStart=${join(prefix, 'bin', 'meshbuild')} `))
    const r = await run('systemd-analyze', ['verify', file], { cwd: outside, env: cleanEnv() }, children)
    assert.equal(r.code, 0, describeRun(r))
    // verify exits 0 on unknown keys and bad values too, and only warns: no warning may name the unit.
    const complaints = `${r.stdout}${r.stderr}`.split('\n').filter(l => l.includes('meshbuild.service'))
    assert.deepEqual(complaints, [])
  })
})
