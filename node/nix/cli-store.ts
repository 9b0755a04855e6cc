// StoreBackend over Nix 2.8's command-line tools (nix-store, nix path-info).
// Each method is one or two Nix calls however many paths it is given (a batch of NARs is one
// nix-store --import); NARs stream through the child processes' pipes with backpressure in both
// directions.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import type { Writable } from 'node:stream'
import { Hash } from '../../protocols/nix/hash.ts'
import { outputPaths, readDerivation } from '../../protocols/nix/derivation.ts'
import { exec, NixCommandError, stopOnAbort } from './exec.ts'
import { nixEnv, type NixSettings } from './nix-config.ts'
import { isDerivation, isStorePath, NIX_STORE_DIR } from '../../protocols/nix/store-path.ts'
import { exportEnd, exportHeader, exportTrailer } from './nix-export-format.ts'
import { referencesFirst } from './closure-order.ts'
import { checkedNar } from './nar-check.ts'
import {
  BUILD_LOG_TAIL_LINES, buildFailureFor, InvalidStorePath, isAborted, NarOutOfOrder, OperationAborted, PathNotValid,
  type ExportOptions, type ImportBatchResult, type ImportInfo, type NarEntry,
  type PathInfo, type RealiseOptions, type RealiseResult, type StoreBackend, type WaitOptions
} from './store-backend.ts'

/** Paths per Nix invocation, well under the kernel's argument-size limit. */
export const PATHS_PER_CALL = 500
/** How long a cancelled nix-store gets to stop its builder before it is killed. */
export const KILL_GRACE_MS = 5_000
/** A log "line" longer than this is passed on in pieces rather than held whole. */
export const MAX_LOG_LINE = 64 * 1024

// nix-store --realise says this for every build without --add-root; meshbuild never wants a root.
const ADD_ROOT_WARNING = /^warning: you did not specify '--add-root'/

export interface CliStoreInit {
  settings?: NixSettings
  storeDir?: string
}

interface PathInfoJson {
  path: string
  valid?: boolean
  narHash?: string
  narSize?: number
  references?: string[]
  deriver?: string
  signatures?: string[]
  ca?: string
}

export class CliStore implements StoreBackend {
  private readonly settings: NixSettings
  readonly storeDir: string

  constructor (init: CliStoreInit = {}) {
    this.settings = init.settings ?? {}
    this.storeDir = init.storeDir ?? NIX_STORE_DIR
  }

  async isValid (paths: string[], options: WaitOptions = {}): Promise<Set<string>> {
    this.checkPaths(paths)
    const valid = new Set<string>()
    for (const batch of batches([...new Set(paths)])) {
      // Exit 1 with the invalid ones listed is the normal answer when some are missing.
      const r = await exec('nix-store', ['--check-validity', '--print-invalid', ...batch], this.execOptions(options))
      if (r.code !== 0 && r.code !== 1) throw new NixCommandError('nix-store --check-validity', r.code, r.stderr)
      const invalid = new Set(lines(r.stdout.toString('utf8')))
      for (const p of batch) if (!invalid.has(p)) valid.add(p)
    }
    return valid
  }

  async queryPathInfo (path: string, options: WaitOptions = {}): Promise<PathInfo | null> {
    return (await this.queryPathInfos([path], options)).get(path) ?? null
  }

  async queryPathInfos (paths: string[], options: WaitOptions = {}): Promise<Map<string, PathInfo>> {
    this.checkPaths(paths)
    const unique = [...new Set(paths)]
    // `nix path-info` takes a .drv to mean its outputs (and would build them), so derivations
    // go with --derivation; that flag maps other paths to their derivers, so they go without.
    // With --derivation an invalid .drv fails the whole call, hence the validity check first.
    const drvs = unique.filter(p => p.endsWith('.drv'))
    const validDrvs = drvs.length > 0 ? [...await this.isValid(drvs, options)] : []
    const others = unique.filter(p => !p.endsWith('.drv'))
    const result = new Map<string, PathInfo>()
    for (const [group, flags] of [[validDrvs, ['--derivation']], [others, []]] as const) {
      for (const batch of batches(group)) {
        const out = await this.run('nix', ['path-info', '--json', '--sigs', ...flags, ...batch], options)
        for (const entry of JSON.parse(out) as PathInfoJson[]) {
          if (entry.valid === false) continue
          const info = parsePathInfo(entry)
          result.set(info.path, info)
        }
      }
    }
    return result
  }

  async closure (paths: string[], options: WaitOptions = {}): Promise<string[]> {
    this.checkPaths(paths)
    if (paths.length === 0) return []
    // One call: the closure must come out in one topological order, references first.
    const out = await this.run('nix-store', ['--query', '--requisites', ...new Set(paths)], options)
    return lines(out)
  }

  async closureInfos (roots: string[], options: WaitOptions = {}): Promise<{ infos: PathInfo[], missing: string[] }> {
    this.checkPaths(roots)
    const unique = [...new Set(roots)]
    if (unique.length === 0) return { infos: [], missing: [] }
    // `nix path-info -r` fails on an invalid root, so find those first; then one call per kind of
    // root (see queryPathInfos for why .drv roots need --derivation). Three Nix calls at most,
    // where closure() + queryPathInfos() take four or five.
    const valid = await this.isValid(unique, options)
    const missing = unique.filter(p => !valid.has(p))
    const byPath = new Map<string, PathInfo>()
    const drvs = unique.filter(p => valid.has(p) && p.endsWith('.drv'))
    const others = unique.filter(p => valid.has(p) && !p.endsWith('.drv'))
    for (const [group, flags] of [[drvs, ['--derivation']], [others, []]] as const) {
      for (const batch of batches(group)) {
        const out = await this.run('nix', ['path-info', '--json', '--sigs', '--recursive', ...flags, ...batch], options)
        for (const entry of JSON.parse(out) as PathInfoJson[]) {
          if (entry.valid === false) continue
          const info = parsePathInfo(entry)
          byPath.set(info.path, info)
        }
      }
    }
    return { infos: referencesFirst(byPath), missing }
  }

  async realise (drvPath: string, options: RealiseOptions = {}): Promise<RealiseResult> {
    this.checkDrv(drvPath)
    options.signal?.throwIfAborted()
    const args = ['--realise', drvPath]
    if (options.timeout != null) args.push('--timeout', String(options.timeout))
    if (options.maxSilentTime != null) args.push('--max-silent-time', String(options.maxSilentTime))
    if (options.maxJobs != null) args.push('--max-jobs', String(options.maxJobs))
    if (options.systemFeatures != null) args.push('--option', 'system-features', options.systemFeatures.join(' '))

    const child = spawn('nix-store', args, { env: nixEnv(this.settings), stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = exitOf(child)
    const tail: string[] = []
    const stdout: Buffer[] = []
    child.stdout?.on('data', (d: Buffer) => stdout.push(d))
    const log = lineSplitter(line => {
      if (ADD_ROOT_WARNING.test(line)) return
      tail.push(line)
      if (tail.length > BUILD_LOG_TAIL_LINES) tail.shift()
      options.onLog?.(line)
    })
    child.stderr?.setEncoding('utf8')
    child.stderr?.on('data', (d: string) => log.push(d))
    const stop = stopOnAbort(child, options.signal, KILL_GRACE_MS)
    let code: number
    try {
      code = await exited
    } finally {
      stop()
    }
    log.end()
    if (options.signal?.aborted === true) throw new OperationAborted(`build of '${drvPath}'`, options.signal.reason)
    if (code !== 0) {
      if (tail.some(l => l.includes(`cannot build missing derivation '${drvPath}'`) || l.includes(`path '${drvPath}' is not valid`))) {
        throw new PathNotValid(drvPath)
      }
      throw buildFailureFor(drvPath, code, tail)
    }
    return { outputs: await this.outputsOf(drvPath, lines(Buffer.concat(stdout).toString('utf8')), options) }
  }

  async * exportNar (path: string, options: ExportOptions = {}): AsyncGenerator<Uint8Array> {
    // `nix-store --dump` dumps any file it is given; only registered paths may leave the store.
    this.checkPaths([path])
    if (options.knownValid !== true && !(await this.isValid([path], options)).has(path)) throw new PathNotValid(path)
    const child = spawn('nix-store', ['--dump', path], { env: nixEnv(this.settings), stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = exitOf(child)
    let stderr = ''
    child.stderr?.setEncoding('utf8')
    child.stderr?.on('data', (d: string) => { stderr += d })
    const onAbort = (): void => { child.kill('SIGKILL') }
    options.signal?.addEventListener('abort', onAbort, { once: true })
    let finished = false
    try {
      // The stream's async iterator reads only when asked, so a slow consumer pauses nix-store.
      for await (const chunk of child.stdout as AsyncIterable<Buffer>) yield chunk
      const code = await exited
      if (options.signal?.aborted === true) throw new OperationAborted(`export of '${path}'`, options.signal.reason)
      if (code !== 0) throw new NixCommandError(`nix-store --dump ${path}`, code, stderr)
      finished = true
    } finally {
      options.signal?.removeEventListener('abort', onAbort)
      // The consumer stopped early, or something failed: nix-store must not linger.
      if (!finished && child.exitCode == null && child.signalCode == null) child.kill('SIGKILL')
    }
  }

  async importNars (infos: ImportInfo[], nars: AsyncIterable<NarEntry>, options: WaitOptions = {}): Promise<ImportBatchResult> {
    for (const info of infos) this.checkInfo(info)
    const { signal } = options
    const source = nars[Symbol.asyncIterator]()
    if (infos.length === 0 || signal?.aborted === true) {
      await source.return?.()
      signal?.throwIfAborted()
      return { imported: [] }
    }

    const child = spawn('nix-store', ['--import'], { env: nixEnv(this.settings), stdio: ['pipe', 'pipe', 'pipe'] })
    const exited = exitOf(child)
    let stderr = ''
    const stdout: Buffer[] = []
    child.stdout?.on('data', (d: Buffer) => stdout.push(d))
    child.stderr?.setEncoding('utf8')
    child.stderr?.on('data', (d: string) => { stderr += d })
    const stdin = child.stdin as Writable
    stdin.on('error', () => {}) // EPIPE when Nix gives up early; its exit code tells why
    let exitCode: number | null = null
    exited.then(c => { exitCode = c }, () => {})
    // Stopping is ending stdin, never killing first: Nix then reads the partial NAR to EOF and fails
    // on it, having registered every path whose trailer it read (so the error semantics above hold).
    let killTimer: NodeJS.Timeout | undefined
    const stop = (): void => {
      if (exitCode != null || killTimer != null) return
      stdin.end()
      killTimer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS)
      killTimer.unref()
    }
    signal?.addEventListener('abort', stop, { once: true })

    let current: string | undefined
    try {
      for (const info of infos) {
        current = info.path
        const next = await source.next()
        if (next.done === true) throw new NarOutOfOrder(info.path, undefined)
        if (next.value.path !== info.path) throw new NarOutOfOrder(info.path, next.value.path)
        // 1. The header and the NAR, checked as it streams; 2. its trailer, which has Nix
        //    register the path: written only once the NAR matched.
        await writeAll(stdin, exportHeader(), exited)
        await this.writeNar(stdin, info, next.value.nar, exited, signal)
        await writeAll(stdin, exportTrailer(info), exited)
      }
      current = undefined
      const extra = await source.next()
      if (extra.done !== true) throw new NarOutOfOrder(undefined, extra.value.path)
      // 3. The end marker; Nix prints what it imported once it has read it.
      await writeAll(stdin, exportEnd(), exited)
      stdin.end()
      const code = await exited
      if (code !== 0) throw nixImportError(code, stderr)
      const imported = lines(Buffer.concat(stdout).toString('utf8'))
      const expected = infos.map(i => i.path)
      if (imported.length !== expected.length || expected.some(p => !imported.includes(p))) {
        throw new NixCommandError('nix-store --import', code, `imported ${imported.join(', ')} instead of ${expected.join(', ')}\n${stderr}`)
      }
      return { imported }
    } catch (err) {
      stop()
      const code = await exited
      await source.return?.()
      if (isAborted(signal)) throw new OperationAborted(`import of '${current ?? infos[0]?.path ?? ''}'`, signal?.reason)
      if (err instanceof NixExited) throw nixImportError(code, stderr)
      throw err
    } finally {
      signal?.removeEventListener('abort', stop)
      if (killTimer != null) clearTimeout(killTimer)
    }
  }

  async deletePaths (paths: string[], options: WaitOptions = {}): Promise<void> {
    this.checkPaths(paths)
    if (paths.length > 0) await this.run('nix-store', ['--delete', ...new Set(paths)], options)
  }

  /** Writes one NAR to nix-store's stdin, checked (nar-check.ts) so that not one byte past its end or past narSize reaches Nix. */
  private async writeNar (stdin: Writable, info: ImportInfo, nar: AsyncIterable<Uint8Array>, exited: Promise<number>, signal: AbortSignal | undefined): Promise<void> {
    for await (const chunk of checkedNar(info, nar, signal)) await writeAll(stdin, chunk, exited)
  }

  /** Output name to path for a built derivation, read from the .drv (one process fewer than `nix show-derivation`). */
  private async outputsOf (drvPath: string, printed: string[], options: WaitOptions): Promise<Record<string, string>> {
    const drv = await readDerivation(drvPath, options.signal != null ? { signal: options.signal } : {})
    const outputs = Object.fromEntries(outputPaths(drv))
    // Floating content-addressed outputs have no path in the .drv; nix-store printed them all.
    const known = new Set(Object.values(outputs))
    if (Object.keys(outputs).length === 0 || printed.some(p => !known.has(p))) {
      throw new NixCommandError(`nix-store --realise ${drvPath}`, 0, `cannot name the outputs ${printed.join(', ')}`)
    }
    return outputs
  }

  private async run (cmd: string, args: string[], options: WaitOptions): Promise<string> {
    const r = await exec(cmd, args, this.execOptions(options))
    if (r.code !== 0) {
      const invalid = /path '([^']+)' is not valid/.exec(r.stderr)
      if (invalid?.[1] != null) throw new PathNotValid(invalid[1])
      throw new NixCommandError(`${cmd} ${args.slice(0, 4).join(' ')}${args.length > 4 ? ' …' : ''}`, r.code, r.stderr)
    }
    return r.stdout.toString('utf8')
  }

  private execOptions (options: WaitOptions): { settings: NixSettings, signal?: AbortSignal } {
    return options.signal != null ? { settings: this.settings, signal: options.signal } : { settings: this.settings }
  }

  private checkPaths (paths: string[]): void {
    for (const p of paths) if (!isStorePath(p, this.storeDir)) throw new InvalidStorePath(p, this.storeDir)
  }

  private checkInfo (info: ImportInfo): void {
    this.checkPaths([info.path, ...info.references, ...(info.deriver != null ? [info.deriver] : [])])
  }

  private checkDrv (drvPath: string): void {
    if (!isStorePath(drvPath, this.storeDir) || !isDerivation(drvPath)) throw new InvalidStorePath(drvPath, this.storeDir)
  }
}

function parsePathInfo (e: PathInfoJson): PathInfo {
  if (e.narHash == null || e.narSize == null) throw new NixCommandError('nix path-info', 0, `no narHash/narSize for ${e.path}`)
  const info: PathInfo = {
    path: e.path,
    narHash: Hash.parse(e.narHash),
    narSize: e.narSize,
    references: [...(e.references ?? [])].sort(),
    signatures: e.signatures ?? []
  }
  if (e.deriver != null && e.deriver !== '') info.deriver = e.deriver
  if (e.ca != null && e.ca !== '') info.ca = e.ca
  return info
}

/** Why nix-store --import failed: a reference it found invalid, or what it said. */
function nixImportError (code: number, stderr: string): Error {
  const invalid = /path '([^']+)' is not valid/.exec(stderr)
  if (invalid?.[1] != null) return new PathNotValid(invalid[1])
  return new NixCommandError('nix-store --import', code, stderr)
}

/** nix-store exited while we were still writing to it. */
class NixExited extends Error {
  override name = 'NixExited'
}

/** Writes with backpressure: waits for 'drain' when the pipe is full, fails if the child exits. */
async function writeAll (stdin: Writable, bytes: Uint8Array, exited: Promise<number>): Promise<void> {
  if (stdin.destroyed || stdin.writableEnded) throw new NixExited()
  if (stdin.write(bytes)) return
  const stop = new AbortController()
  try {
    await Promise.race([
      once(stdin, 'drain', { signal: stop.signal }),
      once(stdin, 'close', { signal: stop.signal }).then(() => { throw new NixExited() }),
      exited.then(() => { throw new NixExited() })
    ])
  } catch {
    throw new NixExited()
  } finally {
    stop.abort()
  }
}

/** Resolves with the exit code (128 + n for signal n, roughly) once the child and its pipes close. */
function exitOf (child: ChildProcess): Promise<number> {
  const p = new Promise<number>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, sig) => { resolve(code ?? (sig != null ? 128 : 1)) })
  })
  // Callers that stop early never await it; a spawn failure must not become unhandled.
  p.catch(() => {})
  return p
}

function lineSplitter (onLine: (line: string) => void): { push: (d: string) => void, end: () => void } {
  let partial = ''
  return {
    push (d) {
      partial += d
      const parts = partial.split('\n')
      partial = parts.pop() ?? ''
      for (const l of parts) onLine(l)
      while (partial.length > MAX_LOG_LINE) {
        onLine(partial.slice(0, MAX_LOG_LINE))
        partial = partial.slice(MAX_LOG_LINE)
      }
    },
    end () {
      if (partial !== '') onLine(partial)
      partial = ''
    }
  }
}

function lines (text: string): string[] {
  return text.split('\n').filter(l => l !== '')
}

function batches<T> (items: T[]): T[][] {
  const out: T[][] = []
  for (let i = 0; i < items.length; i += PATHS_PER_CALL) out.push(items.slice(i, i + PATHS_PER_CALL))
  return out
}
