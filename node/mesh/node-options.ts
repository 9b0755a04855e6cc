// What a node is started with (the CLI's join options) and the shapes of its control API.
import type { Beacon } from '../../protocols/mesh/messages.ts'
import type { PublicKey, SecretKey } from '../../protocols/nix/signing-key.ts'
import type { CacheRef } from '../cache/cache-client.ts'
import type { CompressionName } from '../cache/compression.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { MachineCapabilities } from '../scheduler/matching.ts'
import type { Logger } from '../log.ts'
import type { PenaltyBoxOptions } from './penalty-box.ts'
import type { JobTrace } from './job-trace.ts'

export interface SignerOptions {
  cacheKey: SecretKey
  cacheDir: string
  /** Where the HTTP binary cache listens; none when absent. */
  cacheListen?: { host: string, port: number }
  compression?: CompressionName
}

export interface NodeOptions {
  dataDir: string
  listen: string[]
  capabilities: MachineCapabilities
  maxJobs: number
  speedFactor: number
  /** This node's weight as an owner against other owners' (join --share, fair-share.ts); absent: 1. */
  share?: number
  meshSecret: string
  bootstrap?: string[]
  mdns?: boolean
  /** Overrides of the penalty box for misbehaving peers (tests; a durationMs of 0 only logs). */
  penalties?: Partial<PenaltyBoxOptions>
  leaseMs?: number
  /** Below this many free bytes in the Nix store the node takes no work. */
  minFreeDiskBytes: number
  log: Logger
  store?: StoreBackend
  /** From --trace FILE: every job's phases, as Chrome trace-event JSON (job-trace.ts). */
  trace?: JobTrace
  /** Makes this node the mesh's signing node, holding the shared binary cache. */
  signer?: SignerOptions
  /**
   * From --trusted-keys: when given, the only keys (besides this node's own) whose signatures
   * admit a peer's paths into this store and, on the signer, a worker's outputs into the cache.
   * Without it a peer's paths need the signature of the key that peer announces, and the signer
   * trusts only its own key.
   */
  trustedKeys?: PublicKey[]
  /** From --cache-public-key: the keys a shared cache must sign with for this node to use it. */
  cachePublicKeys?: string[]
  /** From --cache-url: the shared cache named directly (needs cachePublicKeys). */
  cacheUrl?: string
  /**
   * From --serve-builder: the builder socket plain Nix uses as a remote builder, and the
   * machines file for nix.conf's `builders = @file` (node/builder/builder-service.ts).
   */
  serveBuilder?: boolean
  /** From --http-listen: where the read-only HTTP listener (/metrics) binds; none when absent. */
  httpListen?: { host: string, port: number }
}

/** The shared cache this node uses, how it was chosen, and the signers it ignores. */
export interface CacheChoice {
  ref?: CacheRef
  /** The signer outputs are offered to: this node, or a peer whose cache key is configured. */
  signer?: { peerId: string, signer: NonNullable<Beacon['signer']> }
  reason: string
  ignored: Array<{ peerId: string, cacheKey: string, reason: string }>
}

export interface SubmitOptions {
  priority: number
  timeout?: number
  maxSilentTime?: number
  /** Build each job on two different peers; admit outputs only when their NAR hashes agree. */
  checkReproducible?: boolean
  /**
   * A submission of the builder socket: its jobs are built on peers only and their outputs go to
   * the socket's root (Job.remoteOnly); nothing is substituted into this store for it either.
   */
  remoteOnly?: boolean
}

/** All the system features a machine supports, mandatory or not (what Nix is told it has). */
export function allFeatures (caps: MachineCapabilities): string[] {
  return [...new Set([...caps.features, ...caps.mandatoryFeatures])]
}
