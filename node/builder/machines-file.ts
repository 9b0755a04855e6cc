// The machines file that makes plain Nix use the builder socket: one line in the format of
// nix.conf's `builders` (Nix 2.8's parseBuilderLine, src/libstore/machines.cc):
//   URI systems ssh-key max-jobs speed-factor supported-features mandatory-features
// nix.conf says `builders = @<file>`, and Nix's build hook reads the file each time it starts, so
// the line follows the mesh: build-remote sends us only derivations whose system and features it
// lists, and when no peer builds anything the file is empty and Nix builds locally (a missing file
// too: the node stopped), the refusal of a builder that supports nothing.
import { rename, writeFile } from 'node:fs/promises'

/** One peer's announced build capabilities. */
export interface PeerCapabilities {
  systems: string[]
  /** Every feature it supports, mandatory ones included. */
  features: string[]
  maxJobs: number
}

/** Nix's speed factor for the socket: it is the only builder listed, so 1 (Nix's default). */
const SPEED_FACTOR = 1

/** Nix may hand the socket this many builds per slot of the peers (see defaultMaxJobs). */
export const JOBS_PER_SLOT = 4
/** And at least this many, so that a small mesh's queue does not run dry between Nix's polls. */
export const MIN_MAX_JOBS = 16

/**
 * How many builds Nix hands the socket at once (max-jobs). Not the peers' slots: a derivation Nix
 * finds every slot of its builders taken for is postponed and retried only every
 * build-poll-interval (5 s; Nix 2.8 does not wake it when a build ends), which left the peers idle
 * between batches (bench/builder.ts: 1.6–1.9 × LB with the slots, 1.22–1.27 with 64). A few
 * times the slots keeps ready work queued in the mesh, whose scheduler orders it.
 */
export function defaultMaxJobs (peers: PeerCapabilities[]): number {
  const slots = peers.reduce((n, p) => n + Math.max(0, p.maxJobs), 0)
  return Math.max(MIN_MAX_JOBS, JOBS_PER_SLOT * slots)
}

export function builderStoreUri (socketPath: string, rootDir: string): string {
  return `unix://${socketPath}?root=${rootDir}`
}

/** A list field: comma-separated, `-` when empty. */
function listField (xs: string[]): string {
  return xs.length > 0 ? xs.join(',') : '-'
}

/**
 * The machines file's text: the socket with the union of the building peers' systems and
 * features, sorted so it only changes when the mesh does; empty when no peer builds (an empty
 * systems field would mean "this machine's system" to Nix).
 */
export function machinesFileText (socketPath: string, rootDir: string, peers: PeerCapabilities[], maxJobs?: number): string {
  const building = peers.filter(p => p.maxJobs > 0 && p.systems.length > 0)
  if (building.length === 0) return ''
  const systems = [...new Set(building.flatMap(p => p.systems))].sort()
  const features = [...new Set(building.flatMap(p => p.features))].sort()
  const jobs = maxJobs ?? defaultMaxJobs(building)
  // Mandatory features stay empty: the socket takes any derivation its systems and features allow.
  return `${builderStoreUri(socketPath, rootDir)} ${systems.join(',')} - ${jobs} ${SPEED_FACTOR} ${listField(features)} -\n`
}

/**
 * Whether one peer can build a derivation of `system` requiring `requiredFeatures` (the line
 * lists the union, so a derivation may pass it that no single peer builds).
 */
export function meshCanBuild (peers: PeerCapabilities[], system: string, requiredFeatures: string[]): boolean {
  return peers.some(p => p.maxJobs > 0 && p.systems.includes(system) && requiredFeatures.every(f => p.features.includes(f)))
}

/** Replaces the file at once (a hook starting meanwhile reads the old text or the new, whole). */
export async function writeMachinesFile (path: string, text: string): Promise<void> {
  const temp = `${path}.${process.pid}.tmp`
  await writeFile(temp, text, { mode: 0o644 })
  await rename(temp, path)
}
