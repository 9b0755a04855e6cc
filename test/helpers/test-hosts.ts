// Test hosts: several "machines" on this one, for end-to-end tests of the mesh.
//
// A host is a network namespace joined to a bridge made for the run (so mDNS multicast works for
// real between hosts and nowhere else), and each command run in it sees a `/nix` bind-mounted from
// a directory of its own, so every host has its own Nix store and database. docs/testing.md says
// how to use it; it needs root, `ip` (iproute2), `unshare` and `mount`.
//
// Every name a run creates starts with `mbt-<run id>-`, and the run's directory
// `<tmpdir>/mbt-<run id>/owner.json` records the creating process, so `sweepStale()` can tell
// leftovers of a dead run from a run still in progress in another process.
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { accessSync, constants as fsConstants, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { constants as osConstants, tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { nixEnv, type NixSettings } from '../../node/nix/nix-config.ts'

/** Every object a run creates (namespace, link, directory) is named `${NAME_PREFIX}<run id>-…`. */
export const NAME_PREFIX = 'mbt-'
/** Linux limits interface names to 15 bytes (IFNAMSIZ - 1). */
const MAX_IFNAME = 15
const RUN_ID_LENGTH = 5
const RUN_ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789'
// What the harness names, and nothing else: sweepStale() must never touch a stranger's `mbt-…`.
const RUN_ID = `${NAME_PREFIX}([a-z0-9]{${RUN_ID_LENGTH}})`
const NAMESPACE_PATTERN = new RegExp(`^${RUN_ID}-h\\d+$`)
const LINK_PATTERN = new RegExp(`^${RUN_ID}-(?:br|v\\d+)$`)
const DIR_PATTERN = new RegExp(`^${RUN_ID}$`)
/** What a run's directory holds; one holding anything else is not ours to remove. */
const RUN_DIR_ENTRIES = new Set(['owner.json', 'hosts', 'shared'])
/** The interface a host sees on its side of the veth pair. */
export const HOST_INTERFACE = 'eth0'
const MAX_HOSTS = 250
const DEFAULT_EXEC_TIMEOUT_MS = 60_000
const DEFAULT_KILL_GRACE_MS = 2_000
/** How long SIGKILLed processes get to disappear before teardown goes on regardless. */
const KILL_WAIT_MS = 2_000
const SETUP_TIMEOUT_MS = 30_000
/** A run directory without its owner file is taken as being created, not stale, for this long. */
const OWNERLESS_GRACE_MS = 60_000
const NETNS_DIR = '/run/netns'
const SYS_NET_DIR = '/sys/class/net'

/** The machine cannot host test hosts (not root, a tool missing, no /nix to mount over). */
export class TestHostsUnavailable extends Error {
  override name = 'TestHostsUnavailable'
}

/** An `ip` command that builds the network failed; the message holds what it said. */
export class HostSetupFailed extends Error {
  override name = 'HostSetupFailed'
}

/** A command run in a host ran longer than its timeout and was killed. */
export class HostCommandTimeout extends Error {
  override name = 'HostCommandTimeout'
  readonly host: string
  readonly command: string
  constructor (host: string, command: string, timeoutMs: number) {
    super(`${command} in test host ${host} ran longer than ${timeoutMs} ms and was killed`)
    this.host = host
    this.command = command
  }
}

/** A command run in a host with `execText` exited non-zero. */
export class HostCommandFailed extends Error {
  override name = 'HostCommandFailed'
  readonly host: string
  readonly command: string
  readonly code: number
  readonly stderr: string
  constructor (host: string, command: string, code: number, stderr: string) {
    const said = stderr.trim().split('\n').slice(-5).join('\n')
    super(`${command} in test host ${host} exited with ${code}${said !== '' ? `: ${said}` : ''}`)
    this.host = host
    this.command = command
    this.code = code
    this.stderr = stderr
  }
}

/** The host's network was destroyed; nothing more can run in it. */
export class HostGone extends Error {
  override name = 'HostGone'
}

/** `destroy()` finished but some of the run's objects are still there. */
export class TeardownIncomplete extends Error {
  override name = 'TeardownIncomplete'
}

/** `waitForOutput` did not see its pattern in time, or the process exited first. */
export class OutputNotSeen extends Error {
  override name = 'OutputNotSeen'
}

export interface TestNetworkOptions {
  /** How many hosts, 1 to 250. */
  hosts: number
  /** Default timeout of `host.exec`. */
  execTimeoutMs?: number
  /** How long spawned processes get between SIGTERM and SIGKILL at teardown. */
  killGraceMs?: number
  /** Remove leftovers of dead earlier runs first (default true). */
  sweep?: boolean
}

export interface HostExecOptions {
  input?: string | Uint8Array
  /** Default: `host.nixEnv()`. */
  env?: NodeJS.ProcessEnv
  cwd?: string
  /** Default: the network's `execTimeoutMs` (60 s). */
  timeoutMs?: number
  signal?: AbortSignal
}

export interface HostExecResult {
  code: number
  /** The signal that ended the command, if one did. */
  signal: NodeJS.Signals | null
  stdout: string
  stdoutBytes: Buffer
  stderr: string
}

export interface HostSpawnOptions {
  /** Default: `host.nixEnv()`. */
  env?: NodeJS.ProcessEnv
  cwd?: string
  stdio?: StdioOptions
}

interface OwnerRecord {
  pid: number
  /** Field 22 of /proc/<pid>/stat, so a reused PID is not taken for the creator. */
  startTicks: string | null
  subnet: string
  createdAt: string
}

interface Tools { ip: string, unshare: string, sh: string, mount: string, umount: string }

let tools: Tools | undefined

/** Absolute paths of the tools the harness runs, so a caller's env without PATH cannot break it. */
function requireTools (): Tools {
  if (tools != null) return tools
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/bin', '/bin']
  const find = (name: string): string => {
    for (const dir of dirs) {
      if (dir === '') continue
      const path = join(dir, name)
      try {
        accessSync(path, fsConstants.X_OK)
        return path
      } catch {}
    }
    throw new TestHostsUnavailable(`test hosts need \`${name}\`, not found in ${dirs.join(delimiter)}`)
  }
  tools = { ip: find('ip'), unshare: find('unshare'), sh: find('sh'), mount: find('mount'), umount: find('umount') }
  return tools
}

function runDirOf (runId: string): string {
  return join(tmpdir(), `${NAME_PREFIX}${runId}`)
}

function newRunId (): string {
  let id = ''
  for (let i = 0; i < RUN_ID_LENGTH; i++) id += RUN_ID_ALPHABET[randomInt(RUN_ID_ALPHABET.length)]
  return id
}

function procStartTicks (pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null
  } catch {
    return null
  }
}

function ownerAlive (owner: OwnerRecord): boolean {
  try {
    process.kill(owner.pid, 0)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false
  }
  return owner.startTicks == null || procStartTicks(owner.pid) === owner.startTicks
}

async function readOwner (runId: string): Promise<OwnerRecord | null> {
  try {
    const value: unknown = JSON.parse(await readFile(join(runDirOf(runId), 'owner.json'), 'utf8'))
    if (typeof value !== 'object' || value == null) return null
    const v = value as Record<string, unknown>
    if (typeof v.pid !== 'number' || typeof v.subnet !== 'string') return null
    return {
      pid: v.pid,
      startTicks: typeof v.startTicks === 'string' ? v.startTicks : null,
      subnet: v.subnet,
      createdAt: typeof v.createdAt === 'string' ? v.createdAt : ''
    }
  } catch {
    return null
  }
}

function listDir (dir: string): string[] {
  try {
    return readdirSync(dir)
  } catch {
    return []
  }
}

/** The run's namespaces and root-namespace links that exist right now. */
function runObjects (runId: string): { namespaces: string[], links: string[] } {
  return {
    namespaces: listDir(NETNS_DIR).filter(n => NAMESPACE_PATTERN.exec(n)?.[1] === runId),
    links: listDir(SYS_NET_DIR).filter(n => LINK_PATTERN.exec(n)?.[1] === runId)
  }
}

/** PIDs of the processes whose network namespace is the named one (what `ip netns pids` does). */
function namespacePids (namespace: string): number[] {
  let ns: { dev: number, ino: number }
  try {
    ns = statSync(join(NETNS_DIR, namespace))
  } catch {
    return []
  }
  const pids: number[] = []
  for (const entry of listDir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const s = statSync(`/proc/${entry}/ns/net`)
      if (s.ino === ns.ino && s.dev === ns.dev) pids.push(Number(entry))
    } catch {} // gone meanwhile, or a zombie
  }
  return pids
}

function signalPids (pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    if (pid === process.pid) continue
    try { process.kill(pid, signal) } catch {}
  }
}

/** Deletes the run's links (veths before the bridge) and namespaces in one `ip` call. */
function removeRunObjects (runId: string): void {
  const { namespaces, links } = runObjects(runId)
  const bridge = bridgeName(runId)
  const lines = [
    ...links.filter(l => l !== bridge).map(l => `link del dev ${l}`),
    ...links.filter(l => l === bridge).map(l => `link del dev ${l}`),
    ...namespaces.map(n => `netns del ${n}`)
  ]
  if (lines.length === 0) return
  // -force: go on after an object that vanished meanwhile; what remains is checked by the caller.
  spawnSync(requireTools().ip, ['-force', '-batch', '-'], { input: lines.join('\n') + '\n', stdio: ['pipe', 'ignore', 'ignore'], timeout: SETUP_TIMEOUT_MS })
}

/** Unmounts whatever is still mounted under the run's directory or as one of its namespaces. */
function unmountLeftovers (runId: string): void {
  let mountinfo = ''
  try {
    mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return
  }
  const runDir = runDirOf(runId)
  const nsPrefix = join(NETNS_DIR, `${NAME_PREFIX}${runId}-`)
  const points = mountinfo.split('\n')
    .map(line => (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter(p => p.startsWith(runDir + '/') || p === runDir || p.startsWith(nsPrefix))
    .reverse() // innermost first
  if (points.length > 0) spawnSync(requireTools().umount, ['-l', ...points], { stdio: 'ignore', timeout: SETUP_TIMEOUT_MS })
}

/** Kills what runs in the run's namespaces and removes all its objects; synchronous but for `rm`. */
function removeRunSync (runId: string): void {
  for (const ns of runObjects(runId).namespaces) signalPids(namespacePids(ns), 'SIGKILL')
  removeRunObjects(runId)
  unmountLeftovers(runId)
}

function bridgeName (runId: string): string {
  return `${NAME_PREFIX}${runId}-br`
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Polls `done` until it is true or `timeoutMs` passes; says which. */
async function waitUntil (done: () => boolean, timeoutMs: number, intervalMs = 25): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (!done()) {
    if (Date.now() >= deadline) return false
    await sleep(intervalMs)
  }
  return true
}

/** Runs `ip` with a batch of commands on stdin; throws HostSetupFailed with what it said. */
async function ipBatch (args: string[], lines: string[]): Promise<void> {
  const ip = requireTools().ip
  const batch = lines.join('\n') + '\n'
  const { code, stderr } = await new Promise<{ code: number | null, stderr: string }>((resolve, reject) => {
    const child = spawn(ip, [...args, '-batch', '-'], { stdio: ['pipe', 'ignore', 'pipe'], timeout: SETUP_TIMEOUT_MS })
    let err = ''
    child.stderr.on('data', (d: Buffer) => { err += d.toString('utf8') })
    child.on('error', reject)
    child.on('close', code => { resolve({ code, stderr: err }) })
    child.stdin.end(batch)
  })
  if (code !== 0) {
    throw new HostSetupFailed(`ip ${[...args, '-batch'].join(' ')} exited with ${code}: ${stderr.trim()}\nbatch was:\n${batch}`)
  }
}

async function ipJson (args: string[]): Promise<unknown> {
  const ip = requireTools().ip
  return await new Promise((resolve, reject) => {
    const child = spawn(ip, ['-j', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: SETUP_TIMEOUT_MS })
    let out = ''
    let err = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString('utf8') })
    child.stderr.on('data', (d: Buffer) => { err += d.toString('utf8') })
    child.on('error', reject)
    child.on('close', code => {
      if (code !== 0) { reject(new HostSetupFailed(`ip -j ${args.join(' ')} exited with ${code}: ${err.trim()}`)); return }
      try { resolve(JSON.parse(out === '' ? '[]' : out)) } catch (e) { reject(e) }
    })
  })
}

// IPv4 arithmetic for picking the run's /24.
function ipToInt (ip: string): number {
  const parts = ip.split('.').map(Number)
  return (((parts[0] ?? 0) << 24) | ((parts[1] ?? 0) << 16) | ((parts[2] ?? 0) << 8) | (parts[3] ?? 0)) >>> 0
}

function intToIp (n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.')
}

function cidrRange (cidr: string): [number, number] {
  const [ip = '', len = '32'] = cidr.split('/')
  const bits = Number(len)
  const size = 2 ** (32 - bits)
  const start = Math.floor(ipToInt(ip) / size) * size
  return [start, start + size - 1]
}

/** Ranges the machine already routes or holds addresses in, and the subnets of live runs. */
async function rangesInUse (): Promise<Array<[number, number]>> {
  const ranges: Array<[number, number]> = []
  const routes = await ipJson(['-4', 'route', 'show', 'table', 'all'])
  if (Array.isArray(routes)) {
    for (const r of routes as Array<Record<string, unknown>>) {
      // A default route overlaps everything and says nothing about a conflict.
      if (typeof r.dst === 'string' && r.dst !== 'default') ranges.push(cidrRange(r.dst))
    }
  }
  const links = await ipJson(['-4', 'addr', 'show'])
  if (Array.isArray(links)) {
    for (const link of links as Array<Record<string, unknown>>) {
      if (!Array.isArray(link.addr_info)) continue
      for (const a of link.addr_info as Array<Record<string, unknown>>) {
        if (typeof a.local === 'string' && typeof a.prefixlen === 'number') ranges.push(cidrRange(`${a.local}/${a.prefixlen}`))
      }
    }
  }
  for (const entry of listDir(tmpdir())) {
    const runId = DIR_PATTERN.exec(entry)?.[1]
    if (runId == null) continue
    const owner = await readOwner(runId)
    if (owner != null && ownerAlive(owner)) ranges.push(cidrRange(owner.subnet))
  }
  return ranges
}

/** A random private /24 that overlaps no route, address or live run on this machine. */
async function pickSubnet (): Promise<string> {
  const used = await rangesInUse()
  for (let attempt = 0; attempt < 64; attempt++) {
    const pool = attempt < 32 ? 0 : randomInt(3)
    const base = pool === 0
      ? `10.${200 + randomInt(55)}.${randomInt(256)}.0`
      : pool === 1 ? `172.${16 + randomInt(16)}.${randomInt(256)}.0` : `192.168.${randomInt(256)}.0`
    const [start, end] = cidrRange(`${base}/24`)
    if (!used.some(([s, e]) => s <= end && start <= e)) return `${base}/24`
  }
  throw new TestHostsUnavailable('no free private /24 for test hosts: every candidate overlaps a route or address of this machine')
}

// Networks of this process, torn down by the exit and signal handlers should a test run crash.
const liveNetworks = new Set<TestNetwork>()
const HANDLED_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP']

function destroyAllSync (): void {
  for (const net of liveNetworks) {
    try { net.destroySync() } catch {}
  }
}

function onSignal (signal: NodeJS.Signals): void {
  destroyAllSync()
  uninstallHandlers()
  // Let the signal do what it would have done had we not listened, unless someone else listens.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
}

let handlersInstalled = false

function installHandlers (): void {
  if (handlersInstalled) return
  handlersInstalled = true
  process.on('exit', destroyAllSync)
  for (const s of HANDLED_SIGNALS) process.on(s, onSignal)
}

function uninstallHandlers (): void {
  if (!handlersInstalled) return
  handlersInstalled = false
  process.off('exit', destroyAllSync)
  for (const s of HANDLED_SIGNALS) process.off(s, onSignal)
}

/**
 * Removes the namespaces, links and directories of earlier runs whose creating process is dead.
 * Runs of live processes (this one's included) are left alone. Returns the run ids removed.
 */
export async function sweepStale (): Promise<string[]> {
  const runIds = new Set<string>()
  const found = [
    ...listDir(NETNS_DIR).map(n => NAMESPACE_PATTERN.exec(n)?.[1]),
    ...listDir(SYS_NET_DIR).map(n => LINK_PATTERN.exec(n)?.[1]),
    ...listDir(tmpdir()).map(n => DIR_PATTERN.exec(n)?.[1])
  ]
  for (const id of found) if (id != null) runIds.add(id)
  const ours = new Set([...liveNetworks].map(n => n.runId))
  const removed: string[] = []
  for (const runId of runIds) {
    if (ours.has(runId)) continue
    const owner = await readOwner(runId)
    if (owner != null && ownerAlive(owner)) continue
    if (owner == null) {
      // A directory without its owner file is young only while its creator is writing it.
      const age = await stat(runDirOf(runId)).then(s => Date.now() - s.mtimeMs, () => Infinity)
      if (age < OWNERLESS_GRACE_MS) continue
    }
    removeRunSync(runId)
    const entries = listDir(runDirOf(runId))
    if (entries.every(e => RUN_DIR_ENTRIES.has(e))) await rm(runDirOf(runId), { recursive: true, force: true })
    removed.push(runId)
  }
  return removed
}

/** Resolves with the first match of `pattern` in what `child` writes to stdout (or stderr). */
export async function waitForOutput (
  child: ChildProcess,
  pattern: RegExp,
  options: { timeoutMs?: number, stream?: 'stdout' | 'stderr' } = {}
): Promise<RegExpMatchArray> {
  const timeoutMs = options.timeoutMs ?? 10_000
  const source = options.stream === 'stderr' ? child.stderr : child.stdout
  if (source == null) throw new OutputNotSeen(`process ${child.pid} has no piped ${options.stream ?? 'stdout'}`)
  return await new Promise((resolve, reject) => {
    let seen = ''
    let other = ''
    const otherStream = options.stream === 'stderr' ? child.stdout : child.stderr
    const cleanup = (): void => {
      clearTimeout(timer)
      source.off('data', onData)
      otherStream?.off('data', onOther)
      child.off('exit', onExit)
    }
    const onData = (d: Buffer): void => {
      seen += d.toString('utf8')
      const m = seen.match(pattern)
      if (m != null) { cleanup(); resolve(m) }
    }
    const onOther = (d: Buffer): void => { other += d.toString('utf8') }
    const describe = (): string => `; saw ${JSON.stringify(seen.slice(-500))}, other stream ${JSON.stringify(other.slice(-500))}`
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      cleanup()
      reject(new OutputNotSeen(`process ${child.pid} exited (${code ?? signal}) before writing ${pattern}${describe()}`))
    }
    const timer = setTimeout(() => {
      cleanup()
      reject(new OutputNotSeen(`process ${child.pid} did not write ${pattern} within ${timeoutMs} ms${describe()}`))
    }, timeoutMs)
    source.on('data', onData)
    otherStream?.on('data', onOther)
    child.on('exit', onExit)
  })
}

/** One test host: a network namespace with an address on the run's bridge and a /nix of its own. */
export class TestHost {
  readonly index: number
  /** The network namespace's name, unique to the run; error messages use it. */
  readonly name: string
  /** Its IPv4 address on the bridge, e.g. 10.231.7.1. */
  readonly address: string
  readonly prefixLength = 24
  /** Its network interface, inside the namespace. */
  readonly interface = HOST_INTERFACE
  /** The directory holding its `nix` (mounted on /nix inside it) and its `cache`. */
  readonly root: string
  readonly #network: TestNetwork
  readonly #children = new Set<ChildProcess>()

  constructor (network: TestNetwork, index: number, name: string, address: string, root: string) {
    this.#network = network
    this.index = index
    this.name = name
    this.address = address
    this.root = root
  }

  /** The directory that is `/nix` inside this host. */
  get nixDir (): string {
    return join(this.root, 'nix')
  }

  /**
   * The environment for a command in this host: NIX_CONFIG from meshbuild's settings, no
   * NIX_REMOTE (the machine's daemon is not this host's store), and a cache dir of its own.
   */
  nixEnv (settings: NixSettings = {}, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
    // Hosts share the machine's users and PID namespace but not /nix/var/nix/userpool: two hosts
    // would take the same nixbld user, and Nix kills every process of a build user before a build
    // starts, so one host's build killed another's. Builds in test hosts run as root instead, and
    // so without the sandbox: given as inherited config, meshbuild's policy (nix-config.ts) sees it.
    const env = nixEnv(settings, { ...base, NIX_CONFIG: `${base.NIX_CONFIG ?? ''}\nbuild-users-group =` })
    delete env.NIX_REMOTE
    env.XDG_CACHE_HOME = join(this.root, 'cache')
    return env
  }

  /**
   * Starts `cmd args` inside the host (its namespace, its /nix). The process leads a process group
   * of its own; teardown kills the group. Prefer `exec` for commands that end.
   */
  spawn (cmd: string, args: string[] = [], options: HostSpawnOptions = {}): ChildProcess {
    this.#network.assertLive()
    const t = requireTools()
    // `ip netns exec` and `unshare` exec in place, so the child's PID is the command's own.
    const argv = [
      'netns', 'exec', this.name,
      t.unshare, '--mount', '--propagation', 'private',
      t.sh, '-c', '"$1" --bind "$2" /nix && shift 2 && exec "$@"', 'mbt-host', t.mount, this.nixDir,
      cmd, ...args
    ]
    const child = spawn(t.ip, argv, {
      env: options.env ?? this.nixEnv(),
      cwd: options.cwd,
      stdio: options.stdio ?? ['pipe', 'pipe', 'pipe'],
      detached: true
    })
    this.#children.add(child)
    child.on('exit', () => this.#children.delete(child))
    child.on('error', () => this.#children.delete(child))
    return child
  }

  /** Runs `cmd args` inside the host; resolves with its exit status and output whatever the code. */
  async exec (cmd: string, args: string[] = [], options: HostExecOptions = {}): Promise<HostExecResult> {
    const timeoutMs = options.timeoutMs ?? this.#network.execTimeoutMs
    const command = [cmd, ...args].join(' ')
    const child = this.spawn(cmd, args, { env: options.env, cwd: options.cwd })
    return await new Promise((resolve, reject) => {
      const out: Buffer[] = []
      let err = ''
      let settled = false
      const finish = (fn: () => void): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        options.signal?.removeEventListener('abort', onAbort)
        fn()
      }
      const kill = (): void => {
        if (child.pid != null) { try { process.kill(-child.pid, 'SIGKILL') } catch {} }
      }
      const timer = setTimeout(() => {
        kill()
        finish(() => { reject(new HostCommandTimeout(this.name, command, timeoutMs)) })
      }, timeoutMs)
      const onAbort = (): void => {
        kill()
        finish(() => { reject(options.signal?.reason ?? new Error(`${command} in test host ${this.name} aborted`)) })
      }
      if (options.signal?.aborted === true) onAbort()
      options.signal?.addEventListener('abort', onAbort)
      child.stdout?.on('data', (d: Buffer) => out.push(d))
      child.stderr?.on('data', (d: Buffer) => { err += d.toString('utf8') })
      child.on('error', e => { finish(() => { reject(e) }) })
      child.on('close', (code, signal) => {
        const stdoutBytes = Buffer.concat(out)
        finish(() => {
          // A signal death reads as the shell would report it: 128 + the signal's number.
          const exitCode = code ?? 128 + (signal != null ? osConstants.signals[signal] : 0)
          resolve({ code: exitCode, signal, stdout: stdoutBytes.toString('utf8'), stdoutBytes, stderr: err })
        })
      })
      child.stdin?.on('error', () => {}) // the command may exit before reading all input
      child.stdin?.end(options.input)
    })
  }

  /** Like exec, but throws HostCommandFailed on a non-zero exit; returns stdout as text. */
  async execText (cmd: string, args: string[] = [], options: HostExecOptions = {}): Promise<string> {
    const r = await this.exec(cmd, args, options)
    if (r.code !== 0) throw new HostCommandFailed(this.name, [cmd, ...args].join(' '), r.code, r.stderr)
    return r.stdout
  }

  /** PIDs of every process running in this host's namespace right now. */
  pids (): number[] {
    return namespacePids(this.name)
  }

  /** True while a process this host started (spawn or exec) has not exited. */
  get busy (): boolean {
    return this.#children.size > 0
  }

  /** Signals every process of this host: the groups it started and anything else in its namespace. */
  signalAll (signal: NodeJS.Signals): void {
    for (const child of this.#children) {
      if (child.pid == null) continue
      try { process.kill(-child.pid, signal) } catch {}
    }
    signalPids(this.pids(), signal)
  }
}

/** The hosts of one run, their bridge and their directories. */
export class TestNetwork {
  readonly runId: string
  /** `<tmpdir>/mbt-<run id>`: holds `hosts/<name>/nix` for each host and `shared`. */
  readonly dir: string
  /** A directory every host can read and write (only /nix differs between hosts). */
  readonly sharedDir: string
  readonly bridge: string
  /** The hosts' /24, e.g. 10.231.7.0/24. */
  readonly subnet: string
  readonly hosts: readonly TestHost[]
  readonly execTimeoutMs: number
  readonly killGraceMs: number
  #state: 'live' | 'destroying' | 'destroyed' = 'live'
  #destroyed: Promise<void> | undefined

  private constructor (runId: string, subnet: string, count: number, options: TestNetworkOptions) {
    this.runId = runId
    this.dir = runDirOf(runId)
    this.sharedDir = join(this.dir, 'shared')
    this.bridge = bridgeName(runId)
    this.subnet = subnet
    this.execTimeoutMs = options.execTimeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS
    this.killGraceMs = options.killGraceMs ?? DEFAULT_KILL_GRACE_MS
    const base = ipToInt(subnet.split('/')[0] ?? '')
    const hosts: TestHost[] = []
    for (let i = 0; i < count; i++) {
      const name = `${NAME_PREFIX}${runId}-h${i}`
      hosts.push(new TestHost(this, i, name, intToIp(base + i + 1), join(this.dir, 'hosts', name)))
    }
    this.hosts = hosts
  }

  /**
   * Makes `options.hosts` hosts on a bridge of their own, each with an initialised empty Nix store.
   * On failure everything made so far is removed before the error is thrown.
   */
  static async create (options: TestNetworkOptions): Promise<TestNetwork> {
    const count = options.hosts
    if (!Number.isInteger(count) || count < 1 || count > MAX_HOSTS) {
      throw new RangeError(`hosts must be an integer from 1 to ${MAX_HOSTS}, got ${count}`)
    }
    if (process.getuid?.() !== 0) throw new TestHostsUnavailable('test hosts need root (network and mount namespaces)')
    try {
      if (!statSync('/nix').isDirectory()) throw new Error('not a directory')
    } catch {
      throw new TestHostsUnavailable('test hosts need a /nix directory to bind-mount each host\'s store over')
    }
    requireTools()
    if (options.sweep !== false) await sweepStale()

    const subnet = await pickSubnet()
    let runId = ''
    for (let attempt = 0; ; attempt++) {
      runId = newRunId()
      try {
        await mkdir(runDirOf(runId), { mode: 0o755 })
        break
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 10) throw err
      }
    }
    const owner: OwnerRecord = { pid: process.pid, startTicks: procStartTicks(process.pid), subnet, createdAt: new Date().toISOString() }
    await writeFile(join(runDirOf(runId), 'owner.json'), JSON.stringify(owner) + '\n')

    const net = new TestNetwork(runId, subnet, count, options)
    liveNetworks.add(net)
    installHandlers()
    try {
      await net.#build()
    } catch (err) {
      await net.destroy().catch(() => {})
      throw err
    }
    return net
  }

  /** Host `i`; throws RangeError for an index the network does not have. */
  host (i: number): TestHost {
    const h = this.hosts[i]
    if (h == null) throw new RangeError(`test network ${this.runId} has ${this.hosts.length} hosts, no host ${i}`)
    return h
  }

  assertLive (): void {
    if (this.#state !== 'live') throw new HostGone(`test network ${this.runId} is ${this.#state}`)
  }

  async #build (): Promise<void> {
    for (const name of [this.bridge, ...this.hosts.flatMap(h => [vethRoot(h), vethInner(h)])]) {
      if (Buffer.byteLength(name) > MAX_IFNAME) throw new HostSetupFailed(`interface name ${name} is longer than ${MAX_IFNAME} bytes`)
    }
    await mkdir(this.sharedDir, { mode: 0o777 })
    // The bridge and the root ends of the veths get no addresses, not even IPv6 link-local ones
    // (addrgenmode none): the machine itself is not reachable from the hosts. Bridged frames skip
    // iptables (br_netfilter may be loaded with a FORWARD policy that drops), and mDNS is flooded
    // without IGMP snooping.
    await ipBatch([], [
      `link add ${this.bridge} type bridge mcast_snooping 0 nf_call_iptables 0 nf_call_ip6tables 0 nf_call_arptables 0`,
      `link set dev ${this.bridge} addrgenmode none multicast on up`,
      ...this.hosts.flatMap(h => [
        `netns add ${h.name}`,
        `link add ${vethRoot(h)} type veth peer name ${vethInner(h)} netns ${h.name}`,
        `link set dev ${vethRoot(h)} addrgenmode none multicast on master ${this.bridge} up`
      ])
    ])
    // Inside: loopback, the address, and a route for multicast so mDNS can send with no default
    // route (there is none: nothing beyond the bridge is reachable).
    await Promise.all(this.hosts.map(async h => {
      await ipBatch(['-n', h.name], [
        'link set dev lo up',
        `link set dev ${vethInner(h)} name ${HOST_INTERFACE}`,
        `link set dev ${HOST_INTERFACE} multicast on up`,
        `addr add ${h.address}/${h.prefixLength} dev ${HOST_INTERFACE}`,
        `route add 224.0.0.0/4 dev ${HOST_INTERFACE}`
      ])
      await mkdir(join(h.nixDir, 'store'), { recursive: true })
      await mkdir(join(h.nixDir, 'var', 'nix'), { recursive: true })
      await mkdir(join(h.root, 'cache'), { recursive: true })
      await h.execText('nix-store', ['--init'], { timeoutMs: SETUP_TIMEOUT_MS })
    }))
  }

  /**
   * Kills every process of the hosts (SIGTERM, then SIGKILL after `killGraceMs`), deletes the
   * namespaces, veths and bridge, unmounts leftovers and removes the run's directory. Idempotent;
   * throws TeardownIncomplete if anything of the run is still there afterwards.
   */
  async destroy (): Promise<void> {
    this.#destroyed ??= this.#teardown()
    await this.#destroyed
  }

  async #teardown (): Promise<void> {
    if (this.#state === 'destroyed') return // destroySync got there first
    this.#state = 'destroying'
    const quiet = (): boolean => this.hosts.every(h => !h.busy && h.pids().length === 0)
    for (const h of this.hosts) h.signalAll('SIGTERM')
    if (!await waitUntil(quiet, this.killGraceMs)) {
      for (const h of this.hosts) h.signalAll('SIGKILL')
      await waitUntil(quiet, KILL_WAIT_MS)
    }
    removeRunSync(this.runId)
    await rm(this.dir, { recursive: true, force: true })
    this.#finish()
    this.#checkGone()
  }

  /** Teardown for exit and signal handlers: SIGKILL at once, no waiting, no promises. */
  destroySync (): void {
    if (this.#state === 'destroyed') return
    for (const h of this.hosts) h.signalAll('SIGKILL')
    removeRunSync(this.runId)
    rmSync(this.dir, { recursive: true, force: true })
    this.#finish()
  }

  #finish (): void {
    this.#state = 'destroyed'
    liveNetworks.delete(this)
    if (liveNetworks.size === 0) uninstallHandlers()
  }

  #checkGone (): void {
    const { namespaces, links } = runObjects(this.runId)
    let dirLeft = false
    try { statSync(this.dir); dirLeft = true } catch {}
    if (namespaces.length > 0 || links.length > 0 || dirLeft) {
      throw new TeardownIncomplete(`test network ${this.runId} left namespaces [${namespaces.join(', ')}], links [${links.join(', ')}]${dirLeft ? `, directory ${this.dir}` : ''}`)
    }
  }
}

function vethRoot (h: TestHost): string {
  return h.name.replace(/-h(\d+)$/, '-v$1')
}

function vethInner (h: TestHost): string {
  return h.name.replace(/-h(\d+)$/, '-n$1')
}
