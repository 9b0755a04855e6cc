// Every message of the mesh: its type and its validator. docs/protocols.md describes each one.
import { arr, bool, int, num, obj, oneOf, optional, record, SchemaError, str, validator, type Check } from './schema.ts'
import { isStorePath } from '../nix/store-path.ts'
import { CLAIM_KEY_LENGTH, LOG_LINE_CHARS, LOG_MESSAGE_LINES, MAX_BUILDING_LISTED, MAX_CLAIMS_LISTED, MAX_LIST_ITEMS, MAX_PATH_SIGNATURES } from './constants.ts'

/** A store path under /nix/store by Nix's rules (store-path.ts, the one definition). */
const storePath: Check<string> = (v, where) => {
  const s = str(260)(v, where)
  if (!isStorePath(s)) throw new SchemaError(`${where}: '${s.slice(0, 80)}' is malformed`)
  return s
}
const name = str(128, /^[A-Za-z0-9_.+-]+$/)
const names = arr(name, 64)
const multiaddr = str(256)
const nixKey = str(256, /^[^:\s]+:[A-Za-z0-9+/=]+$/)
const narHash = str(128, /^sha256:[0-9a-z]+$/)

// --- gossip ----------------------------------------------------------------------------------

/** Bounds of an owner's share weight (join --share): a ratio of 10^6 between two owners at most. */
export const MIN_SHARE = 0.001
export const MAX_SHARE = 1000
/** Bound of the slots an owner announces building its jobs: more than any mesh holds. */
export const MAX_OWNER_SLOTS = 1_000_000

export const checkBeacon = obj({
  v: int(1, 1),
  seq: int(0),
  systems: names,
  features: names,
  mandatoryFeatures: names,
  maxJobs: int(0, 4096),
  running: int(0, 4096),
  queued: int(0),
  speedFactor: num(0.001, 1e6),
  load: num(0, 1e6),
  freeDiskBytes: num(0),
  diskLow: bool,
  building: arr(storePath, MAX_BUILDING_LISTED),
  /** Slots building this node's own jobs, here and on peers (its leases): what its share is measured against. */
  ownerSlots: optional(int(0, MAX_OWNER_SLOTS)),
  /** This node's share weight as an owner (join --share); absent: 1. */
  share: optional(num(MIN_SHARE, MAX_SHARE)),
  addresses: arr(multiaddr, 32),
  signingKey: optional(nixKey),
  /** Present when this node is the mesh's signer. */
  signer: optional(obj({
    cacheKey: nixKey,
    cacheUrls: arr(str(256, /^https?:\/\//), 8),
    paths: int(0),
    narBytes: num(0),
    hits: int(0),
    misses: int(0)
  }))
})
export type Beacon = ReturnType<typeof checkBeacon>
export const validateBeacon = validator('beacon', checkBeacon)

export const checkOfferEntry = obj({ system: name, requiredFeatures: names, count: int(1) })
const claimKey = str(CLAIM_KEY_LENGTH, /^[0-9abcdfghijklmnpqrsvwxyz]{12}$/)
export const validateOffer = validator('offer', obj({
  v: int(1, 1),
  seq: int(0),
  entries: arr(checkOfferEntry, 256),
  /** The owner's claims (node/scheduler/claims.ts): jobs it will build, and those it has started. */
  claims: optional(obj({ open: arr(claimKey, MAX_CLAIMS_LISTED), started: arr(claimKey, MAX_CLAIMS_LISTED) }))
}))
export type Offer = ReturnType<typeof validateOffer>

// --- steal -----------------------------------------------------------------------------------

export const validateStealRequest = validator('steal request', obj({
  want: int(1, 64),
  systems: names,
  features: names,
  mandatoryFeatures: names
}))
export type StealRequest = ReturnType<typeof validateStealRequest>

const checkWorkItem = obj({
  drvPath: storePath,
  outputs: record(storePath, 64, name),
  system: name,
  requiredFeatures: names,
  timeout: optional(int(1)),
  maxSilentTime: optional(int(1)),
  /** Built on two peers and compared (--check-reproducible): report NAR hashes, do not offer to the signer. */
  check: optional(bool)
})
export const validateStealGrant = validator('steal grant', obj({
  leaseMs: int(1000, 3_600_000),
  items: arr(checkWorkItem, 64)
}))
export type StealGrant = ReturnType<typeof validateStealGrant>

// --- lease -----------------------------------------------------------------------------------

export const validateLeaseRequest = validator('lease request', obj({
  /** Jobs the worker still builds and wants to keep. */
  renew: arr(storePath, MAX_LIST_ITEMS),
  /** Jobs the worker gives back without a result (it is shutting down). */
  release: optional(arr(storePath, MAX_LIST_ITEMS))
}))
export type LeaseRequest = ReturnType<typeof validateLeaseRequest>

export const validateLeaseReply = validator('lease reply', obj({ lost: arr(storePath, MAX_LIST_ITEMS) }))
export type LeaseReply = ReturnType<typeof validateLeaseReply>

// --- result ----------------------------------------------------------------------------------

export const FAILURE_KINDS = ['build-failed', 'timed-out', 'hash-mismatch', 'not-deterministic', 'transient'] as const

/** Bound of a reported build time: 30 days, longer than any build a lease would survive. */
export const MAX_BUILD_MS = 30 * 24 * 3600 * 1000

export const validateResultReport = validator('result report', obj({
  drvPath: storePath,
  ok: bool,
  outputs: optional(record(storePath, 64, name)),
  /** For a checked job: output name -> NAR hash of the output as built. */
  narHashes: optional(record(narHash, 64, name)),
  /** With ok: wall time of the build itself on the worker (ms, not the input fetch); absent from older peers. */
  buildMs: optional(int(0, MAX_BUILD_MS)),
  failure: optional(obj({
    kind: oneOf(FAILURE_KINDS),
    message: str(4096),
    logTail: optional(arr(str(4096), 200))
  }))
}))
export type ResultReport = ReturnType<typeof validateResultReport>

export const validateResultAck = validator('result ack', obj({ accepted: bool }))

// --- store paths -----------------------------------------------------------------------------

export const validatePathInfoRequest = validator('path-info request', obj({
  /** The closure of these paths is described. */
  roots: arr(storePath, MAX_LIST_ITEMS),
  /** Describe also the outputs of the input derivations of every .drv root (and their closures). */
  withInputs: optional(bool)
}))

export const checkPathInfo = obj({
  path: storePath,
  narHash: str(128, /^sha256:[0-9a-z]+$/),
  narSize: int(1),
  references: arr(storePath, MAX_LIST_ITEMS),
  deriver: optional(storePath),
  signatures: optional(arr(str(512), MAX_PATH_SIGNATURES)),
  ca: optional(str(512))
})
export type PathInfoMessage = ReturnType<typeof checkPathInfo>

/** What a receiver of the nar protocol does with each NAR as it arrives; it must read `nar` to its end (or throw). */
export type NarConsumer = (info: PathInfoMessage, nar: AsyncIterable<Uint8Array>) => Promise<void>

export const validatePathInfoReply = validator('path-info reply', obj({
  /** Closure of the roots, each path after every path it references. */
  infos: arr(checkPathInfo, MAX_LIST_ITEMS),
  /** Roots (and, with withInputs, input outputs) this peer does not have. */
  missing: arr(storePath, MAX_LIST_ITEMS),
  /** With withInputs: the input outputs added to the roots, present or missing. */
  inputs: optional(arr(storePath, MAX_LIST_ITEMS))
}))
export type PathInfoReply = ReturnType<typeof validatePathInfoReply>

export const validateNarRequest = validator('nar request', obj({ paths: arr(storePath, MAX_LIST_ITEMS) }))

/** Before each NAR on a nar stream: its metadata, or why it cannot be sent. */
export const validateNarHeader = validator('nar header', obj({
  path: storePath,
  info: optional(checkPathInfo),
  error: optional(str(1024))
}))
export type NarHeader = ReturnType<typeof validateNarHeader>

// --- signing ---------------------------------------------------------------------------------

export const validateSignOffer = validator('sign offer', obj({
  /** Paths the worker vouches for, each after the paths it references; signatures include the worker's. */
  paths: arr(checkPathInfo, MAX_LIST_ITEMS)
}))
export type SignOffer = ReturnType<typeof validateSignOffer>

export const validateSignReply = validator('sign reply', obj({
  /** Offered paths the cache now holds (stored now or before). */
  stored: arr(storePath, MAX_LIST_ITEMS),
  /** Offered paths it refused; permanent ones are not worth offering again. */
  rejected: arr(obj({ path: storePath, reason: str(1024), permanent: bool }), MAX_LIST_ITEMS)
}))
export type SignReply = ReturnType<typeof validateSignReply>

// --- build logs ------------------------------------------------------------------------------

const drvStorePath: Check<string> = (v, where) => {
  const s = storePath(v, where)
  if (!s.endsWith('.drv')) throw new SchemaError(`${where}: not a derivation (a .drv store path)`)
  return s
}

export const validateLogRequest = validator('log request', obj({
  drvPath: drvStorePath,
  /** Keep sending lines as the build writes them, until it ends. */
  follow: bool,
  /** Start at this byte of the log (a reader resuming); default: its last LOG_BACKLOG_BYTES. */
  fromByte: optional(int(0))
}))
export type LogRequest = ReturnType<typeof validateLogRequest>

export const LOG_OUTCOMES = ['built', 'failed', 'unknown'] as const
export type LogOutcome = typeof LOG_OUTCOMES[number]

const checkLogFrame = obj({
  type: oneOf(['lines', 'end'] as const),
  /** type lines: whole lines, without their newline; empty as a heartbeat. */
  lines: optional(arr(str(LOG_LINE_CHARS), LOG_MESSAGE_LINES)),
  /** type end: whether this peer had the log at all. */
  found: optional(bool),
  /** type end: how the build ended, as far as this peer knows. */
  outcome: optional(oneOf(LOG_OUTCOMES)),
  /** Bytes of the log not sent: the start of a long log, or the rest past the per-request cap. */
  skippedBytes: optional(int(0))
})

/** What a log stream carries after the request: lines messages, then one end message. */
export type LogFrame =
  | { type: 'lines', lines: string[] }
  | { type: 'end', found: boolean, outcome: LogOutcome, skippedBytes?: number }

export const validateLogFrame = (value: unknown): LogFrame => {
  const f = checkLogFrame(value, 'log frame')
  if (f.type === 'lines') {
    if (f.lines === undefined) throw new SchemaError('log frame.lines: missing')
    return { type: 'lines', lines: f.lines }
  }
  if (f.found === undefined || f.outcome === undefined) throw new SchemaError('log frame: an end needs found and outcome')
  return { type: 'end', found: f.found, outcome: f.outcome, ...(f.skippedBytes !== undefined ? { skippedBytes: f.skippedBytes } : {}) }
}
