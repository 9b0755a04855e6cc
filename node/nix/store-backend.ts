// What meshbuild needs from the local Nix store, apart from how it is reached: the Nix daemon's
// worker protocol (daemon-store.ts) or the CLI tools (cli-store.ts). Callers see only this interface.
import type { Hash } from '../../protocols/nix/hash.ts'

export interface WaitOptions {
  signal?: AbortSignal
}

/** A valid path's registration, as `nix path-info --json --sigs` reports it. */
export interface PathInfo {
  path: string
  narHash: Hash
  narSize: number
  /** Full store paths, sorted. */
  references: string[]
  deriver?: string
  signatures: string[]
  /** Content address (`fixed:…`, `text:…`) when the path has one. */
  ca?: string
}

/**
 * What an import needs to register a NAR. Signatures and CA are kept where the backend can
 * register them (the daemon's AddToStoreNar can; the CLI's export format cannot).
 */
export type ImportInfo = Pick<PathInfo, 'path' | 'narHash' | 'narSize' | 'references' | 'deriver'> & Partial<Pick<PathInfo, 'signatures' | 'ca'>>

export interface RealiseOptions extends WaitOptions {
  /** Seconds the whole build may take (`--timeout`). */
  timeout?: number
  /** Seconds the builder may stay silent (`--max-silent-time`). */
  maxSilentTime?: number
  /** Called with each line of the build log (Nix's stderr, its add-root warning removed). */
  onLog?: (line: string) => void
  /** Overrides `system-features` for this build. */
  systemFeatures?: string[]
  /** `--max-jobs`: how many derivations of the closure Nix may build at once. */
  maxJobs?: number
}

export interface RealiseResult {
  /** Output name to store path. */
  outputs: Record<string, string>
}

/** One NAR of a batch: the path it claims to be, and its bytes. */
export interface NarEntry {
  path: string
  nar: AsyncIterable<Uint8Array>
}

export interface ImportBatchResult {
  /** The paths Nix registered (or found valid already), in the order imported. */
  imported: string[]
}

export interface ExportOptions extends WaitOptions {
  /** The caller has just seen the path valid (in a path-info query): skip the validity check. */
  knownValid?: boolean
}

export interface StoreBackend {
  /** Which of `paths` are valid, in one store query. */
  isValid: (paths: string[], options?: WaitOptions) => Promise<Set<string>>
  /** The path's registration, or null when it is not valid. */
  queryPathInfo: (path: string, options?: WaitOptions) => Promise<PathInfo | null>
  /** Registrations of the valid ones among `paths`, keyed by path; invalid paths are absent. */
  queryPathInfos: (paths: string[], options?: WaitOptions) => Promise<Map<string, PathInfo>>
  /** Every path reachable from `paths` by references, `paths` included; references come first. */
  closure: (paths: string[], options?: WaitOptions) => Promise<string[]>
  /** Builds a derivation; throws a BuildFailure subclass when Nix reports one. */
  realise: (drvPath: string, options?: RealiseOptions) => Promise<RealiseResult>
  /**
   * Registrations of the closure of `roots` (a .drv root means the .drv itself), each after the
   * paths it references; `missing` lists the roots that are not valid (their closures are left out).
   */
  closureInfos: (roots: string[], options?: WaitOptions) => Promise<{ infos: PathInfo[], missing: string[] }>
  /** The path's NAR, streamed as Nix produces it; stop iterating to cancel. */
  exportNar: (path: string, options?: ExportOptions) => AsyncIterable<Uint8Array>
  /**
   * Imports the NARs `nars` yields, one per entry of `infos` and in that order, in one go. Each
   * NAR is checked against its info before Nix registers it. Each path's references must be valid
   * already or come earlier in `infos`; paths valid already should be left out (their NARs would
   * be read only to be ignored).
   *
   * On an error at entry k (a NAR that does not match, a source that fails, an abort), entries
   * before k are registered, entry k and those after are not: Nix registers each path as soon as
   * it has read its trailer, and the trailer of entry k is never written.
   */
  importNars: (infos: ImportInfo[], nars: AsyncIterable<NarEntry>, options?: WaitOptions) => Promise<ImportBatchResult>
  /**
   * Deletes `paths` from the store, as `nix-store --delete` does: refused (an error naming the
   * path) for one that something still needs (a referrer, a GC root, a build or import in progress).
   */
  deletePaths: (paths: string[], options?: WaitOptions) => Promise<void>
}

/** A string that is not a store path of this store (`/nix/store/<32 nix32 chars>-<name>`). */
export class InvalidStorePath extends Error {
  override name = 'InvalidStorePath'
  readonly path: string
  constructor (path: string, storeDir: string) {
    super(`'${path}' is not a store path in ${storeDir}`)
    this.path = path
  }
}

/** A well-formed store path that the store does not hold. */
export class PathNotValid extends Error {
  override name = 'PathNotValid'
  readonly path: string
  constructor (path: string) {
    super(`path '${path}' is not valid in the local store`)
    this.path = path
  }
}

/** A NAR whose bytes do not match the hash or size it was announced with; nothing was imported. */
export class NarHashMismatch extends Error {
  override name = 'NarHashMismatch'
  readonly path: string
  readonly expectedHash: Hash
  readonly expectedSize: number
  /** Absent when the NAR was cut short for running past the expected size. */
  readonly actualHash?: Hash
  /** Bytes received; when longer than expected, as many as were read before giving up. */
  readonly actualSize: number
  constructor (path: string, expected: { hash: Hash, size: number }, actual: { hash?: Hash, size: number }) {
    const got = actual.hash != null
      ? `${actual.hash.toNix32()} (${actual.size} bytes)`
      : `more than ${expected.size} bytes (stopped at ${actual.size})`
    super(`NAR of '${path}' does not match: expected ${expected.hash.toNix32()} (${expected.size} bytes), got ${got}`)
    this.path = path
    this.expectedHash = expected.hash
    this.expectedSize = expected.size
    if (actual.hash != null) this.actualHash = actual.hash
    this.actualSize = actual.size
  }
}

/** A batch's NAR source yielded another path, or fewer or more NARs, than the batch announced. */
export class NarOutOfOrder extends Error {
  override name = 'NarOutOfOrder'
  readonly expected: string | undefined
  readonly got: string | undefined
  constructor (expected: string | undefined, got: string | undefined) {
    super(expected === undefined
      ? `a NAR of '${got ?? '?'}' came after the last one announced`
      : got === undefined ? `the NAR of '${expected}' never came` : `expected the NAR of '${expected}', got '${got}'`)
    this.expected = expected
    this.got = got
  }
}

/** Whether `signal` has aborted; a function, so that TypeScript does not narrow `signal.aborted` across awaits. */
export function isAborted (signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

/** The operation was cancelled through its AbortSignal. */
export class OperationAborted extends Error {
  override name = 'AbortError'
  constructor (what: string, reason?: unknown) {
    super(`${what} aborted${reason instanceof Error ? `: ${reason.message}` : ''}`)
  }
}

/**
 * The classes of build failure Nix tells apart by exit code. Nix 2.8's `Worker::exitStatus()`
 * returns 0x60 | mask with mask bits 1 timed out, 2 output hash mismatch, 4 build failure
 * (set by all three), 8 not deterministic — so 100, 101, 102, 104 and, under --keep-going,
 * their combinations; any other code (1, a signal) is a failure outside the build itself.
 */
export type BuildFailureKind = 'permanent' | 'timed-out' | 'hash-mismatch' | 'not-deterministic' | 'transient'

/** How many log lines a BuildFailure keeps. */
export const BUILD_LOG_TAIL_LINES = 40

export class BuildFailure extends Error {
  override name: string = 'BuildFailure'
  readonly kind: BuildFailureKind = 'transient'
  readonly drvPath: string
  /** nix-store's exit code, or for the daemon the one its BuildResult status stands for. */
  readonly exitCode: number
  /** The last lines of the build log (at most BUILD_LOG_TAIL_LINES). */
  readonly logTail: string[]
  constructor (drvPath: string, exitCode: number, logTail: string[], what = 'failed') {
    const said = logTail.filter(l => l.startsWith('error:')).at(-1)
    super(`build of '${drvPath}' ${what} (Nix exit status ${exitCode})${said != null ? `: ${said}` : ''}`)
    this.drvPath = drvPath
    this.exitCode = exitCode
    this.logTail = logTail
  }

  /**
   * Whether building the same derivation again, here or elsewhere, can be expected to fail the
   * same way: every kind Nix reports as the build's own (100, 101, 102, 104), as PERMANENT_FAILURES
   * in node/scheduler/job.ts says. A timeout is one: the limits are the submission's, the same on every worker.
   */
  get permanent (): boolean {
    return this.kind !== 'transient'
  }
}

/** The builder failed (exit 100): retrying will not help. */
export class PermanentBuildFailure extends BuildFailure {
  override name = 'PermanentBuildFailure'
  override readonly kind = 'permanent'
  constructor (drvPath: string, exitCode: number, logTail: string[]) { super(drvPath, exitCode, logTail, 'failed') }
}

/** The build ran past `timeout` or stayed silent past `maxSilentTime` (exit 101). */
export class BuildTimedOut extends BuildFailure {
  override name = 'BuildTimedOut'
  override readonly kind = 'timed-out'
  constructor (drvPath: string, exitCode: number, logTail: string[]) { super(drvPath, exitCode, logTail, 'timed out') }
}

/** A fixed-output derivation produced content with another hash (exit 102). */
export class OutputHashMismatch extends BuildFailure {
  override name = 'OutputHashMismatch'
  override readonly kind = 'hash-mismatch'
  constructor (drvPath: string, exitCode: number, logTail: string[]) { super(drvPath, exitCode, logTail, 'produced an unexpected output hash') }
}

/** Building twice gave different outputs (exit 104, only when checking). */
export class NotDeterministic extends BuildFailure {
  override name = 'NotDeterministic'
  override readonly kind = 'not-deterministic'
  constructor (drvPath: string, exitCode: number, logTail: string[]) { super(drvPath, exitCode, logTail, 'is not deterministic') }
}

/** Nix failed for a reason outside the build (exit 1, a signal, a store error): worth retrying. */
export class TransientBuildFailure extends BuildFailure {
  override name = 'TransientBuildFailure'
  override readonly kind = 'transient'
  constructor (drvPath: string, exitCode: number, logTail: string[]) { super(drvPath, exitCode, logTail, 'failed transiently') }
}

/**
 * The failure class for a `nix-store --realise` exit code. Where --keep-going combines bits,
 * the most specific wins: hash mismatch, then not deterministic, then timed out.
 */
export function buildFailureFor (drvPath: string, exitCode: number, logTail: string[]): BuildFailure {
  if (exitCode >= 0x60 && exitCode <= 0x6f) {
    const mask = exitCode & 0x0f
    if ((mask & 0x02) !== 0) return new OutputHashMismatch(drvPath, exitCode, logTail)
    if ((mask & 0x08) !== 0) return new NotDeterministic(drvPath, exitCode, logTail)
    if ((mask & 0x01) !== 0) return new BuildTimedOut(drvPath, exitCode, logTail)
    if ((mask & 0x04) !== 0) return new PermanentBuildFailure(drvPath, exitCode, logTail)
  }
  return new TransientBuildFailure(drvPath, exitCode, logTail)
}
