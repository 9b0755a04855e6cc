// The server side of Nix's daemon worker protocol, as Nix 2.8.0's src/libstore/daemon.cc reads
// requests and writes replies (processConnection, performOp, TunnelLogger), for the operations
// build-remote and `nix copy` use on a remote store. Pure: a WireReader in, bytes out.
import { Hash } from './hash.ts'
import { isStorePath } from './store-path.ts'
import {
  WireReader, WireWriter, DaemonProtocolError, MAX_LIST_COUNT, WORKER_MAGIC_1, WORKER_MAGIC_2, PROTOCOL_VERSION,
  STDERR_NEXT, STDERR_LAST, STDERR_ERROR, STDERR_START_ACTIVITY, STDERR_STOP_ACTIVITY, STDERR_RESULT
} from './daemon-wire.ts'

// WirePathInfo mirrors node/nix/store-backend.ts's PathInfo (protocols/ may not import node/;
// TypeScript checks the two agree where the socket uses them). The build shapes are defined here
// and used by node/builder/builder-store.ts.

/** A path's registration as the wire carries it. */
export interface WirePathInfo {
  path: string
  narHash: Hash
  narSize: number
  references: string[]
  deriver?: string
  signatures: string[]
  ca?: string
}
export type ImportInfo = WirePathInfo
export type PathInfo = WirePathInfo

/** One output of a BasicDerivation as BuildDerivation sends it (derivations.cc readDerivation). */
export interface BasicOutput {
  /** The output's store path; empty for a floating content-addressed output. */
  path: string
  /** `r:sha256`, `sha256`… for a fixed-output or CA output; empty otherwise. */
  hashAlgo: string
  /** The fixed output's hash in base-16; empty otherwise. */
  hash: string
}

/** The derivation BuildDerivation carries: a .drv without its input derivations. */
export interface BasicDerivation {
  outputs: Record<string, BasicOutput>
  inputSrcs: string[]
  platform: string
  builder: string
  args: string[]
  env: Record<string, string>
}

/** What the client set with SetOptions that a build honours. */
export interface ClientBuildOptions {
  /** Seconds; 0 = no limit. SetOptions' maxSilentTime field. */
  maxSilentTime: number
  /** Seconds; 0 = no limit. The `timeout` (alias `build-timeout`) override, when sent. */
  timeout: number
  /** Verbosity the client asked for (0 error … 7 vomit). */
  verbosity: number
}

/** The reply to BuildDerivation: status is one of daemon-wire's BuildStatus values. */
export interface BuildReply {
  status: number
  /** For a failure: what Nix prints after "build of … failed: ". */
  errorMsg: string
  timesBuilt: number
  startTime: number
  stopTime: number
}

/** The oldest client served: framed NARs in AddToStoreNar (1.23) need no STDERR_READ tunnel. */
export const MIN_CLIENT_VERSION = 0x117
export const MINOR_MASK = 0xff
/** From these minors on the client's side of a field exists (daemon.cc's GET_PROTOCOL_MINOR tests). */
export const MINOR = {
  reserveSpace: 11,
  overrides: 12,
  cpuAffinity: 14,
  activities: 20,
  framedNar: 23,
  structuredErrors: 26,
  substituteFlag: 27,
  builtOutputs: 28,
  buildTimes: 29,
  nixVersion: 33
} as const

/** actBuild and lvlInfo, as a daemon's DerivationGoal starts the activity of a build. */
export const ACTIVITY_BUILD = 105
export const LEVEL_ERROR = 0
export const LEVEL_INFO = 3

/** Bounds on what a client may send, tighter than WireReader's defaults where Nix's own are. */
const MAX_PATH_LENGTH = 4096
const MAX_SETTING_LENGTH = 1024 * 1024
const MAX_OVERRIDES = 4096
const MAX_OUTPUTS = 1024
const MAX_ENV_ENTRIES = 64 * 1024
const MAX_SIGNATURES = 1024

/** Operation names from worker-protocol.hh, for messages. */
export const OP_NAMES: Record<number, string> = {
  1: 'IsValidPath', 3: 'HasSubstitutes', 4: 'QueryPathHash', 5: 'QueryReferences', 6: 'QueryReferrers',
  7: 'AddToStore', 8: 'AddTextToStore', 9: 'BuildPaths', 10: 'EnsurePath', 11: 'AddTempRoot',
  12: 'AddIndirectRoot', 13: 'SyncWithGC', 14: 'FindRoots', 16: 'ExportPath', 18: 'QueryDeriver',
  19: 'SetOptions', 20: 'CollectGarbage', 21: 'QuerySubstitutablePathInfo', 22: 'QueryDerivationOutputs',
  23: 'QueryAllValidPaths', 24: 'QueryFailedPaths', 25: 'ClearFailedPaths', 26: 'QueryPathInfo',
  27: 'ImportPaths', 28: 'QueryDerivationOutputNames', 29: 'QueryPathFromHashPart',
  30: 'QuerySubstitutablePathInfos', 31: 'QueryValidPaths', 32: 'QuerySubstitutablePaths',
  33: 'QueryValidDerivers', 34: 'OptimiseStore', 35: 'VerifyStore', 36: 'BuildDerivation',
  37: 'AddSignatures', 38: 'NarFromPath', 39: 'AddToStoreNar', 40: 'QueryMissing',
  41: 'QueryDerivationOutputMap', 42: 'RegisterDrvOutput', 43: 'QueryRealisation',
  44: 'AddMultipleToStore', 45: 'AddBuildLog', 46: 'BuildPathsWithResults'
}

export function opName (op: number): string { return OP_NAMES[op] ?? `number ${op}` }

/** A request that was read whole but cannot be served (a bad path, an unknown hash): in step. */
export class BadRequest extends Error {
  override name = 'BadRequest'
}

export function minorOf (version: number): number { return version & MINOR_MASK }

// --- handshake ---

/**
 * The server's half of the handshake (daemon.cc processConnection): 1. read the client's magic,
 * 2. send ours and our version, 3. read the client's version, its CPU affinity (≥ 1.14) and
 * reserve-space (≥ 1.11), 4. send our Nix version (≥ 1.33); then the caller sends STDERR_LAST
 * (or STDERR_ERROR for a client it refuses). Nix 2.8 sends no trust status. Returns the client's version.
 */
export async function serverHandshake (reader: WireReader, write: (bytes: Uint8Array) => Promise<void>, nixVersion: string): Promise<number> {
  const magic = await reader.readU64('client magic')
  if (magic !== WORKER_MAGIC_1) throw new DaemonProtocolError(`client magic: expected 0x${WORKER_MAGIC_1.toString(16)}, got 0x${magic.toString(16)}`)
  await write(new WireWriter().u64(WORKER_MAGIC_2).u64(PROTOCOL_VERSION).toBytes())
  const version = await reader.readU64('client protocol version')
  if (minorOf(version) >= MINOR.cpuAffinity && await reader.readBool('client CPU affinity flag')) await reader.readU64('client CPU affinity')
  if (minorOf(version) >= MINOR.reserveSpace) await reader.readU64('client reserve-space')
  if (minorOf(version) >= MINOR.nixVersion) await write(new WireWriter().string(nixVersion).toBytes())
  return version
}

/** Why a client's version is not served, or null when it is. */
export function refuseClientVersion (version: number): string | null {
  if (version >> 8 !== PROTOCOL_VERSION >> 8) return `client protocol ${describeVersion(version)} is not protocol 1.x`
  if (version < MIN_CLIENT_VERSION) return `client protocol ${describeVersion(version)} is too old for the meshbuild builder socket (1.${minorOf(MIN_CLIENT_VERSION)} or newer needed)`
  return null
}

export function describeVersion (version: number): string { return `${version >> 8}.${minorOf(version)}` }

// --- requests ---

async function readPath (r: WireReader, field: string): Promise<string> {
  const path = await r.readString(field, MAX_PATH_LENGTH)
  if (!isStorePath(path)) throw new BadRequest(`${field}: '${path.slice(0, 300)}' is not a store path`)
  return path
}

/** A list of paths, judged by the caller once the whole request is read (so a bad one leaves the stream in step). */
async function readPaths (r: WireReader, field: string): Promise<string[]> {
  return await r.readStrings(field, MAX_LIST_COUNT, MAX_PATH_LENGTH)
}

function checkPaths (field: string, paths: readonly string[]): void {
  const bad = paths.find(p => !isStorePath(p))
  if (bad !== undefined) throw new BadRequest(`${field}: '${bad.slice(0, 300)}' is not a store path`)
}

/** A string map; built with fromEntries so that a key like `__proto__` stays a plain key. */
async function readMap (r: WireReader, field: string, maxEntries: number, maxLength: number): Promise<Record<string, string>> {
  const count = await r.readU64(`${field} count`)
  if (count > maxEntries) throw new DaemonProtocolError(`${field}: count ${count} exceeds the limit of ${maxEntries}`)
  const entries: Array<[string, string]> = []
  for (let i = 0; i < count; i++) entries.push([await r.readString(`${field}[${i}] name`, maxLength), await r.readString(`${field}[${i}] value`, maxLength)])
  return Object.fromEntries(entries)
}

/** SetOptions (19), every positional field as daemon.cc reads it, then (≥ 1.12) the overrides. */
export interface ClientSettings {
  keepFailed: boolean
  keepGoing: boolean
  tryFallback: boolean
  verbosity: number
  maxBuildJobs: number
  maxSilentTime: number
  /** The obsolete field that carries verboseBuild: lvlError (0) means "show the build log". */
  verboseBuild: boolean
  buildCores: number
  useSubstitutes: boolean
  overrides: Record<string, string>
}

export async function readSetOptions (r: WireReader, clientVersion: number): Promise<ClientSettings> {
  const keepFailed = await r.readBool('keepFailed')
  const keepGoing = await r.readBool('keepGoing')
  const tryFallback = await r.readBool('tryFallback')
  const verbosity = await r.readU64('verbosity')
  const maxBuildJobs = await r.readU64('maxBuildJobs')
  const maxSilentTime = await r.readU64('maxSilentTime')
  await r.readU64('obsolete useBuildHook')
  const verboseBuild = (await r.readU64('verboseBuild')) === LEVEL_ERROR
  await r.readU64('obsolete logType')
  await r.readU64('obsolete printBuildTrace')
  const buildCores = await r.readU64('buildCores')
  const useSubstitutes = await r.readBool('useSubstitutes')
  const overrides = minorOf(clientVersion) >= MINOR.overrides ? await readMap(r, 'overrides', MAX_OVERRIDES, MAX_SETTING_LENGTH) : {}
  return { keepFailed, keepGoing, tryFallback, verbosity, maxBuildJobs, maxSilentTime, verboseBuild, buildCores, useSubstitutes, overrides }
}

/** What a build honours of the client's settings; `timeout` from the override (`build-timeout` is its alias). */
export function buildOptionsOf (s: ClientSettings): ClientBuildOptions {
  const text = s.overrides.timeout ?? s.overrides['build-timeout'] ?? '0'
  const timeout = /^\d+$/.test(text) ? Number(text) : 0
  return { maxSilentTime: s.maxSilentTime, timeout, verbosity: s.verbosity }
}

/** IsValidPath (1) and QueryPathInfo (26), NarFromPath (38): one path. */
export async function readPathRequest (r: WireReader): Promise<string> { return await readPath(r, 'path') }

/** QueryValidPaths (31): the paths, then (≥ 1.27) whether to substitute. */
export async function readQueryValidPaths (r: WireReader, clientVersion: number): Promise<{ paths: string[], substitute: boolean }> {
  const paths = await readPaths(r, 'paths')
  const substitute = minorOf(clientVersion) >= MINOR.substituteFlag ? await r.readBool('substitute') : false
  checkPaths('paths', paths)
  return { paths, substitute }
}

/**
 * QueryMissing (40): derived paths (≥ 1.30 the same strings as before: `path`, or `drv!out,…`).
 * `nix path-info` sends it before printing, as printMissing. The opaque ones are returned as
 * paths; a `drv!…` target's drv path is returned too (the socket knows no .drv's outputs).
 */
export async function readQueryMissing (r: WireReader): Promise<string[]> {
  const targets = await r.readStrings('targets', MAX_LIST_COUNT, MAX_PATH_LENGTH)
  const paths = targets.map(t => t.replace(/!.*$/, ''))
  const bad = paths.find(p => !isStorePath(p))
  if (bad !== undefined) throw new BadRequest(`targets: '${bad.slice(0, 300)}' is not a store path`)
  return paths
}

/** QueryMissing's reply: willBuild, willSubstitute, unknown, downloadSize, narSize. */
export function encodeMissing (unknown: readonly string[]): Uint8Array {
  return new WireWriter().strings([]).strings([]).strings(unknown).u64(0).u64(0).toBytes()
}

/** ValidPathInfo::read at format 16, the path first: as read, judged by checkInfo once the request is whole. */
interface RawInfo { path: string, deriver: string, hashText: string, references: string[], narSize: number, signatures: string[], ca: string }

async function readRawInfo (r: WireReader): Promise<RawInfo> {
  const path = await r.readString('path', MAX_PATH_LENGTH)
  const deriver = await r.readString('deriver', MAX_PATH_LENGTH)
  const hashText = await r.readString('narHash', MAX_PATH_LENGTH)
  const references = await readPaths(r, 'references')
  await r.readU64('registrationTime')
  const narSize = await r.readU64('narSize')
  await r.readBool('ultimate') // the client's word is not taken for it
  const signatures = await r.readStrings('signatures', MAX_SIGNATURES, MAX_PATH_LENGTH)
  const ca = await r.readString('ca', MAX_PATH_LENGTH)
  return { path, deriver, hashText, references, narSize, signatures, ca }
}

function checkInfo (raw: RawInfo): ImportInfo {
  const { path, deriver, references, narSize, signatures, ca } = raw
  if (!isStorePath(path)) throw new BadRequest(`path: '${path.slice(0, 300)}' is not a store path`)
  let narHash: Hash
  try {
    narHash = Hash.parse(raw.hashText, 'sha256')
  } catch (err) {
    throw new BadRequest(`narHash of '${path}': ${(err as Error).message}`)
  }
  if (deriver !== '' && !isStorePath(deriver)) throw new BadRequest(`deriver of '${path}': '${deriver.slice(0, 300)}' is not a store path`)
  checkPaths(`references of '${path}'`, references)
  const info: ImportInfo = { path, narHash, narSize, references, signatures }
  if (deriver !== '') info.deriver = deriver
  if (ca !== '') info.ca = ca
  return info
}

/** One entry of AddMultipleToStore's stream: ValidPathInfo::read(source, store, 16), path first. */
export async function readValidPathInfo (r: WireReader): Promise<ImportInfo> {
  return checkInfo(await readRawInfo(r))
}

/** AddToStoreNar (39) up to its NAR, which follows framed (≥ 1.23). */
export async function readAddToStoreNar (r: WireReader): Promise<{ info: ImportInfo, repair: boolean, dontCheckSigs: boolean }> {
  const raw = await readRawInfo(r)
  const repair = await r.readBool('repair')
  const dontCheckSigs = await r.readBool('dontCheckSigs')
  return { info: checkInfo(raw), repair, dontCheckSigs }
}

/** AddMultipleToStore (44) up to its framed stream: `count`, then per path its info and its NAR. */
export async function readAddMultipleToStore (r: WireReader): Promise<{ repair: boolean, dontCheckSigs: boolean }> {
  const repair = await r.readBool('repair')
  const dontCheckSigs = await r.readBool('dontCheckSigs')
  return { repair, dontCheckSigs }
}

/** The number of paths at the start of AddMultipleToStore's stream. */
export async function readMultipleCount (r: WireReader): Promise<number> {
  const count = await r.readU64('path count')
  if (count > MAX_LIST_COUNT) throw new DaemonProtocolError(`path count: ${count} exceeds the limit of ${MAX_LIST_COUNT}`)
  return count
}

/** BuildDerivation (36): the .drv path, the BasicDerivation (derivations.cc readDerivation), the build mode. */
export async function readBuildDerivation (r: WireReader): Promise<{ drvPath: string, derivation: BasicDerivation, buildMode: number }> {
  const drvPath = await r.readString('drvPath', MAX_PATH_LENGTH)
  const outputCount = await r.readU64('outputs count')
  if (outputCount > MAX_OUTPUTS) throw new DaemonProtocolError(`outputs: count ${outputCount} exceeds the limit of ${MAX_OUTPUTS}`)
  const entries: Array<[string, BasicOutput]> = []
  for (let i = 0; i < outputCount; i++) {
    const name = await r.readString(`output[${i}] name`, MAX_PATH_LENGTH)
    const path = await r.readString(`output ${name} path`, MAX_PATH_LENGTH)
    const hashAlgo = await r.readString(`output ${name} hashAlgo`, MAX_PATH_LENGTH)
    const hash = await r.readString(`output ${name} hash`, MAX_PATH_LENGTH)
    entries.push([name, { path, hashAlgo, hash }])
  }
  const outputs: Record<string, BasicOutput> = Object.fromEntries(entries)
  const inputSrcs = await readPaths(r, 'inputSrcs')
  const platform = await r.readString('platform', MAX_PATH_LENGTH)
  const builder = await r.readString('builder', MAX_PATH_LENGTH)
  const args = await r.readStrings('args', MAX_ENV_ENTRIES)
  const env = await readMap(r, 'env', MAX_ENV_ENTRIES, 64 * 1024 * 1024)
  const buildMode = await r.readU64('buildMode')
  checkPaths('inputSrcs', inputSrcs)
  if (!isStorePath(drvPath) || !drvPath.endsWith('.drv')) throw new BadRequest(`drvPath: '${drvPath.slice(0, 300)}' is not the store path of a .drv`)
  for (const [name, o] of Object.entries(outputs)) {
    if (o.path !== '' && !isStorePath(o.path)) throw new BadRequest(`output ${name}: '${o.path.slice(0, 300)}' is not a store path`)
  }
  return { drvPath, derivation: { outputs, inputSrcs, platform, builder, args, env }, buildMode }
}

// --- replies ---

/** QueryPathInfo's reply (≥ 1.17): valid, then ValidPathInfo::write without the path, narHash in bare base 16. */
export function encodePathInfoReply (info: PathInfo | null): Uint8Array {
  const w = new WireWriter()
  if (info == null) return w.bool(false).toBytes()
  return w.bool(true)
    .string(info.deriver ?? '')
    .string(Buffer.from(info.narHash.digest).toString('hex'))
    .strings([...info.references].sort())
    .u64(0) // registration time: not kept by the node
    .u64(info.narSize)
    .bool(false) // ultimate: the client did not build it
    .strings(info.signatures)
    .string(info.ca ?? '')
    .toBytes()
}

/** BuildDerivation's reply: status, errorMsg, (≥ 1.29) counts and times, (≥ 1.28) builtOutputs (none: input-addressed). */
export function encodeBuildResult (reply: BuildReply, clientVersion: number): Uint8Array {
  const w = new WireWriter().u64(reply.status).string(reply.errorMsg)
  if (minorOf(clientVersion) >= MINOR.buildTimes) w.u64(reply.timesBuilt).bool(false).u64(reply.startTime).u64(reply.stopTime)
  if (minorOf(clientVersion) >= MINOR.builtOutputs) w.u64(0)
  return w.toBytes()
}

// --- stderr messages (TunnelLogger) ---

export function stderrLast (): Uint8Array { return new WireWriter().u64(STDERR_LAST).toBytes() }

export function stderrNext (text: string): Uint8Array { return new WireWriter().u64(STDERR_NEXT).string(text).toBytes() }

export type Field = number | string

function fields (w: WireWriter, list: readonly Field[]): WireWriter {
  w.u64(list.length)
  for (const f of list) {
    if (typeof f === 'number') w.u64(0).u64(f)
    else w.u64(1).string(f)
  }
  return w
}

export function stderrStartActivity (id: number, level: number, type: number, text: string, list: readonly Field[], parent = 0): Uint8Array {
  return fields(new WireWriter().u64(STDERR_START_ACTIVITY).u64(id).u64(level).u64(type).string(text), list).u64(parent).toBytes()
}

/** The start of a build as a daemon announces it: fields drvPath, machine, round, rounds. */
export function stderrStartBuild (id: number, drvPath: string): Uint8Array {
  return stderrStartActivity(id, LEVEL_INFO, ACTIVITY_BUILD, `building '${drvPath}'`, [drvPath, '', 1, 1])
}

export function stderrResult (id: number, type: number, list: readonly Field[]): Uint8Array {
  return fields(new WireWriter().u64(STDERR_RESULT).u64(id).u64(type), list).toBytes()
}

export function stderrStopActivity (id: number): Uint8Array { return new WireWriter().u64(STDERR_STOP_ACTIVITY).u64(id).toBytes() }

/** An error: (≥ 1.26) type "Error", level, name "Error", message, no position, no traces; else message and exit status. */
export function stderrError (message: string, clientVersion: number): Uint8Array {
  const w = new WireWriter().u64(STDERR_ERROR)
  if (minorOf(clientVersion) >= MINOR.structuredErrors) return w.string('Error').u64(LEVEL_ERROR).string('Error').string(message).u64(0).u64(0).toBytes()
  return w.string(message).u64(1).toBytes()
}
