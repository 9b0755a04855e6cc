// Running Nix's command-line tools: one place that spawns them with meshbuild's settings.
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { nixEnv, type NixSettings } from './nix-config.ts'

export interface ExecResult {
  stdout: Buffer
  stderr: string
  code: number
}

export interface ExecOptions {
  input?: Uint8Array | string
  settings?: NixSettings
  env?: NodeJS.ProcessEnv
  signal?: AbortSignal
}

/** A Nix command that exited non-zero; `stderr` holds what it said. */
export class NixCommandError extends Error {
  override name = 'NixCommandError'
  readonly command: string
  readonly code: number
  readonly stderr: string
  constructor (command: string, code: number, stderr: string) {
    const said = stderr.trim().split('\n').slice(-5).join('\n')
    super(`${command} exited with ${code}${said !== '' ? `: ${said}` : ''}`)
    this.command = command
    this.code = code
    this.stderr = stderr
  }
}

/** Runs `cmd args`, collecting stdout as bytes; resolves whatever the exit code. */
export async function exec (cmd: string, args: string[], options: ExecOptions = {}): Promise<ExecResult> {
  return await new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: options.env ?? nixEnv(options.settings),
      signal: options.signal,
      stdio: ['pipe', 'pipe', 'pipe']
    })
    const out: Buffer[] = []
    let err = ''
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.on('data', (d: Buffer) => { err += d.toString('utf8') })
    child.on('error', reject)
    child.on('close', (code, signal) => {
      resolve({ stdout: Buffer.concat(out), stderr: err, code: code ?? (signal != null ? 128 : 1) })
    })
    child.stdin.on('error', () => {}) // the child may exit before reading all input
    child.stdin.end(options.input)
  })
}

/** Like exec, but throws NixCommandError on a non-zero exit; returns stdout as text. */
export async function execText (cmd: string, args: string[], options: ExecOptions = {}): Promise<string> {
  const r = await exec(cmd, args, options)
  if (r.code !== 0) throw new NixCommandError(`${cmd} ${args.join(' ')}`, r.code, r.stderr)
  return r.stdout.toString('utf8')
}

/**
 * The process groups of every descendant of `pid` but the caller's own group (Linux /proc; none
 * elsewhere). Nix runs each builder in a session of its own, so signalling nix-store alone
 * reaches the builder only through Nix: when nix-store itself has to be killed, the builder's
 * children are orphaned and keep running unless their groups are killed too.
 */
export function processGroupsBelow (pid: number | undefined): number[] {
  if (pid === undefined) return []
  const procs = readProcessTable()
  const own = procs.get(process.pid)?.pgrp
  const children = new Map<number, number[]>()
  for (const [p, { ppid }] of procs) children.set(ppid, [...(children.get(ppid) ?? []), p])
  const groups = new Set<number>()
  const stack = [...(children.get(pid) ?? [])]
  while (stack.length > 0) {
    const p = stack.pop() as number
    const g = procs.get(p)?.pgrp
    if (g !== undefined && g > 1 && g !== own) groups.add(g)
    stack.push(...(children.get(p) ?? []))
  }
  return [...groups]
}

/** Sends `signal` to each process group; groups already gone are skipped. */
export function killProcessGroups (groups: Iterable<number>, signal: NodeJS.Signals): void {
  for (const g of groups) {
    try {
      process.kill(-g, signal)
    } catch {}
  }
}

function readProcessTable (): Map<number, { ppid: number, pgrp: number }> {
  const out = new Map<number, { ppid: number, pgrp: number }>()
  let entries: string[]
  try {
    entries = readdirSync('/proc')
  } catch {
    return out
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8')
      // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      out.set(Number(e), { ppid: Number(fields[1]), pgrp: Number(fields[2]) })
    } catch {}
  }
  return out
}

/**
 * On abort, asks a Nix process to stop (SIGTERM: it then kills its builders), and kills it after
 * a grace time with every process group under it: a builder (in its own session) whose Nix was
 * killed outright would go on. Once the process has exited after an abort, what is left of those
 * groups is killed too. Returns the function that ends the watch.
 */
export function stopOnAbort (child: ChildProcess, signal: AbortSignal | undefined, graceMs: number): () => void {
  if (signal == null) return () => {}
  let timer: NodeJS.Timeout | undefined
  const groups = new Set<number>()
  const note = (): void => { for (const g of processGroupsBelow(child.pid)) groups.add(g) }
  const onAbort = (): void => {
    note()
    child.kill('SIGTERM')
    timer = setTimeout(() => {
      note()
      child.kill('SIGKILL')
      killProcessGroups(groups, 'SIGKILL')
    }, graceMs)
    timer.unref()
  }
  if (signal.aborted) onAbort()
  else signal.addEventListener('abort', onAbort, { once: true })
  return () => {
    signal.removeEventListener('abort', onAbort)
    if (timer != null) clearTimeout(timer)
    if (signal.aborted) killProcessGroups(groups, 'SIGKILL')
  }
}
