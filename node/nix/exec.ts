// Running Nix's command-line tools: one place that spawns them with meshbuild's settings.
import { spawn } from 'node:child_process'
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
