// Runs real meshbuild nodes inside test hosts (test-hosts.ts) and drives them with the real CLI.
import { createWriteStream } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { fileURLToPath } from 'node:url'
import type { ChildProcess } from 'node:child_process'
import { waitForOutput, type TestHost, type TestNetwork, type HostExecResult } from './test-hosts.ts'
import type { StatusReport, SubmissionReport } from '../../node/mesh/reports.ts'
import { waitFor } from './wait.ts'
import { execText } from '../../node/nix/exec.ts'

export const MESHBUILD_BIN = fileURLToPath(new URL('../../bin/meshbuild.js', import.meta.url))

export interface MeshNodeHandle {
  host: TestHost
  dataDir: string
  child: ChildProcess
  peerId: string
  logFile: string
}

export interface StartNodeOptions {
  args?: string[]
  /** Reuse a data dir (restart); default: a fresh one per host. */
  dataDir?: string
  /**
   * The mesh secret file to pass as --mesh-secret-file; default: the network's shared one
   * (meshSecretFile(net)), so every node of a TestNetwork meshes. `false` passes none (the node
   * then makes its own, or uses --open if args say so). Ignored when args carry
   * --mesh-secret-file or --open themselves.
   */
  secretFile?: string | false
}

const SHARED_SECRET_BYTES = 32
const sharedSecrets = new WeakMap<TestNetwork, Promise<string>>()

/** The mesh secret file shared by the nodes of `net` (<sharedDir>/mesh.secret, 0600), made on first use. */
export async function meshSecretFile (net: TestNetwork): Promise<string> {
  let made = sharedSecrets.get(net)
  if (made === undefined) {
    const file = join(net.sharedDir, 'mesh.secret')
    made = writeFile(file, randomBytes(SHARED_SECRET_BYTES).toString('base64') + '\n', { mode: 0o600, flag: 'wx' })
      .catch((err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err })
      .then(() => file)
    sharedSecrets.set(net, made)
  }
  return await made
}

async function secretArgs (net: TestNetwork, options: StartNodeOptions): Promise<string[]> {
  const args = options.args ?? []
  if (args.some(a => a === '--open' || a === '--mesh-secret-file' || a.startsWith('--mesh-secret-file='))) return []
  if (options.secretFile === false) return []
  return ['--mesh-secret-file', options.secretFile ?? await meshSecretFile(net)]
}

/** Starts `meshbuild join` in the host and waits until its control socket is up. */
export async function startNode (net: TestNetwork, host: TestHost, options: StartNodeOptions = {}): Promise<MeshNodeHandle> {
  const dataDir = options.dataDir ?? join(net.sharedDir, `node-${host.index}`)
  // Nodes' logs outlive the test hosts, so a failed run can be read afterwards
  // (MESHBUILD_TEST_LOGS=DIR to choose where).
  const logDir = process.env.MESHBUILD_TEST_LOGS ?? join(tmpdir(), 'meshbuild-test-logs')
  await mkdir(logDir, { recursive: true })
  const logFile = join(logDir, `${host.name}.log`)
  const child = host.spawn(process.execPath, [
    MESHBUILD_BIN, 'join', '--data-dir', dataDir, '--listen', `/ip4/${host.address}/tcp/0`,
    '--log-level', 'debug', '--lease-seconds', '6', ...await secretArgs(net, options), ...(options.args ?? [])
  ])
  const log = createWriteStream(logFile, { flags: 'a' })
  child.stderr?.pipe(log)
  const m = await waitForOutput(child, /node (\S+) ready/, { stream: 'stderr', timeoutMs: 20_000 })
  return { host, dataDir, child, peerId: m[1] ?? '', logFile }
}

/** Sends SIGTERM and waits for the node to exit. */
export async function stopNode (node: MeshNodeHandle, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (node.child.exitCode !== null || node.child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => { node.child.once('exit', () => { resolve() }) })
  node.child.kill(signal)
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([exited, new Promise((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`node in ${node.host.name} did not exit after ${signal}`)) }, 15_000) })])
  } finally {
    // A pending timer would keep the test process alive 15 s after its last node stopped.
    clearTimeout(timer)
  }
}

export async function cli (node: MeshNodeHandle, args: string[], input?: string, timeoutMs = 180_000): Promise<HostExecResult> {
  return await node.host.exec(process.execPath, [MESHBUILD_BIN, ...args, '--data-dir', node.dataDir], {
    timeoutMs,
    ...(input !== undefined ? { input } : {})
  })
}

export async function status (node: MeshNodeHandle): Promise<StatusReport> {
  const r = await cli(node, ['status', '--json'], undefined, 20_000)
  if (r.code !== 0) throw new Error(`status failed (${r.code}): ${r.stderr}`)
  return JSON.parse(r.stdout) as StatusReport
}

/** Waits until every node sees every other as a peer. */
export async function waitForMesh (nodes: MeshNodeHandle[], timeoutMs = 30_000): Promise<void> {
  await waitFor(async () => {
    for (const n of nodes) {
      const s = await status(n)
      const seen = new Set(s.peers.map(p => p.peerId))
      if (!nodes.every(o => o === n || seen.has(o.peerId))) return false
    }
    return true
  }, timeoutMs, `${nodes.length} nodes to see each other by mDNS`, 300)
}

/** Instantiates `expr` (Nix text) inside the host; returns the .drv paths of the given attributes. */
export async function instantiateIn (net: TestNetwork, host: TestHost, expr: string, attrs: string[]): Promise<string[]> {
  const file = join(net.sharedDir, `expr-${Math.random().toString(36).slice(2)}.nix`)
  await writeFile(file, expr)
  const out = await host.execText('nix-instantiate', [file, ...attrs.flatMap(a => ['-A', a])])
  return out.trim().split('\n').filter(l => l !== '')
}

export interface SubmitOutcome {
  code: number
  stdout: string
  stderr: string
  report?: { id: string, state: SubmissionReport['state'], results: SubmissionReport['results'] }
}

export async function submit (node: MeshNodeHandle, drvPaths: string[], args: string[] = []): Promise<SubmitOutcome> {
  const r = await cli(node, ['submit', '-', '--json', ...args], drvPaths.join('\n') + '\n')
  let report: SubmitOutcome['report']
  try {
    report = JSON.parse(r.stdout) as SubmitOutcome['report']
  } catch {}
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, ...(report !== undefined ? { report } : {}) }
}

/**
 * How often each name appears in a count file: test derivations append their name to a file in
 * the network's shared dir when their builder starts, so this counts builder starts per job.
 */
export async function buildCounts (file: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>()
  const text = await readFile(file, 'utf8').catch(() => '')
  for (const name of text.split('\n').filter(l => l !== '')) counts.set(name, (counts.get(name) ?? 0) + 1)
  return counts
}

/** `foo-1` from `/nix/store/<hash>-foo-1.drv`. */
export const drvName = (drvPath: string): string => drvPath.slice(44).replace(/\.drv$/, '')

/** A Nix signing key pair made by `meshbuild key generate NAME` in the network's shared dir. */
export async function generateKey (net: TestNetwork, name: string): Promise<{ sec: string, pub: string }> {
  const sec = join(net.sharedDir, `${name}.sec`)
  const pubFile = join(net.sharedDir, `${name}.pub`)
  await execText(process.execPath, [MESHBUILD_BIN, 'key', 'generate', name, '--secret-file', sec, '--public-file', pubFile])
  return { sec, pub: (await readFile(pubFile, 'utf8')).trim() }
}
