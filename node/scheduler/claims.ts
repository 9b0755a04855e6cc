// Claims: how owners that need the same derivation build it once. Each owner's offer lists the
// jobs it will build (open claims) and those it has started (leased or importing). An owner
// defers a job of its own to a peer that has started it, or else to a peer that claims it and
// whose id sorts before its own; so of two owners one builds, and the other fetches the outputs
// from it once it no longer claims the job (built; or failed or gone, and then it builds it
// itself). Pure.
import { CLAIM_KEY_LENGTH, MAX_CLAIMS_LISTED } from '../../protocols/mesh/constants.ts'
import { TERMINAL_STATES, type Job } from './job.ts'

export { CLAIM_KEY_LENGTH, MAX_CLAIMS_LISTED }

const STORE_PREFIX = '/nix/store/'

export interface Claims {
  open: string[]
  started: string[]
}

/** A peer's claims as sets, for lookups. */
export interface ClaimSets {
  open: ReadonlySet<string>
  started: ReadonlySet<string>
}

export function claimKey (drvPath: string): string {
  return drvPath.startsWith(STORE_PREFIX) ? drvPath.slice(STORE_PREFIX.length, STORE_PREFIX.length + CLAIM_KEY_LENGTH) : drvPath.slice(0, CLAIM_KEY_LENGTH)
}

const STARTED = new Set<Job['state']>(['leased', 'importing'])

/** Jobs another owner may defer to this one: not the builder socket's (their outputs skip the store) nor checked ones. */
function claimable (job: Job): boolean {
  return job.remoteOnly !== true && job.check !== true
}

/**
 * What this owner claims: its started jobs, and its other unfinished ones it does not defer
 * (`deferred`), ready before waiting, then by priority and longest remaining path; each list
 * bounded (the most urgent kept).
 */
export function ownClaims (jobs: Iterable<Job>, deferred: (job: Job) => boolean, limit = MAX_CLAIMS_LISTED): Claims {
  const started: Job[] = []
  const open: Job[] = []
  for (const j of jobs) {
    if (TERMINAL_STATES.has(j.state) || !claimable(j)) continue
    if (STARTED.has(j.state)) started.push(j)
    else if (!deferred(j)) open.push(j)
  }
  const urgent = (a: Job, b: Job): number => Number(b.state === 'ready') - Number(a.state === 'ready') || a.priority - b.priority || b.criticalPath - a.criticalPath
  return {
    open: open.sort(urgent).slice(0, limit).map(j => claimKey(j.drvPath)),
    started: started.sort(urgent).slice(0, limit).map(j => claimKey(j.drvPath))
  }
}

/**
 * The peer `job` is deferred to: a peer that has started it (the first by id), else the claiming
 * peer whose id sorts first if before `selfId`; never one the job gave up on (`notDeferTo`).
 */
export function claimant (job: Job, claimsByPeer: ReadonlyMap<string, ClaimSets>, selfId: string): string | undefined {
  if (!claimable(job)) return undefined
  const key = claimKey(job.drvPath)
  let started: string | undefined
  let open: string | undefined
  for (const [peer, c] of claimsByPeer) {
    if ((job.notDeferTo ?? []).includes(peer)) continue
    if (c.started.has(key)) { if (started === undefined || peer < started) started = peer } else if (peer < selfId && c.open.has(key) && (open === undefined || peer < open)) open = peer
  }
  return started ?? open
}
