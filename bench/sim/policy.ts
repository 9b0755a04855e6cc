// What the simulator asks of a scheduling policy: start at the submission time, say when every
// job has ended, and how each ended.
import type { JobEnd } from './invariants.ts'

export const POLICIES = ['meshbuild', 'static-hook', 'central-pull'] as const
export type PolicyName = typeof POLICIES[number]

export interface Policy {
  /** Starts the machines at 0; the submission arrives at `submitAt`. */
  start: (submitAt: number) => void
  finished: () => boolean
  /** When the last job ended (ms of simulated time). */
  finishedAt: () => number
  ends: () => JobEnd[]
  /** Whether the submitter holds the outputs of `job`. */
  ownerHas: (job: number) => boolean
}
