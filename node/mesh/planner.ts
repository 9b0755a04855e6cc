// Turns a list of .drv paths into a submission: reads each derivation and the input derivations
// it needs, drops those whose outputs are already valid locally (they and their inputs need no
// build), and records what remains as jobs with their dependencies, each with the build time
// its name took before when the build history knows it.
import { readFileSync } from 'node:fs'
import { inputDrvPaths, outputPaths, parseDerivation, requiredSystemFeatures, type Derivation } from '../../protocols/nix/derivation.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { JobSpec, SubmissionSpec } from '../scheduler/job.ts'

export class SubmissionError extends Error {
  override name = 'SubmissionError'
}

export interface PlanOptions {
  id: string
  priority: number
  timeout?: number
  maxSilentTime?: number
  now: number
  /** Build every job on two different peers and compare (--check-reproducible). */
  checkReproducible?: boolean
  /** Jobs for the builder socket (Job.remoteOnly). */
  remoteOnly?: boolean
  /** Asks the shared cache (when there is one) which output paths it can substitute. */
  substitutable?: (paths: string[]) => Promise<Set<string>>
  /** A derivation's build time at speed factor 1 from earlier builds of its name (BuildHistory.estimate), synchronous. */
  estimate?: (drvPath: string) => number | undefined
}

/** Derivations read between two turns of the event loop. */
export const DRVS_PER_TURN = 500

/**
 * Reads and parses .drv files. A .drv is small and on local disk: a synchronous read costs 8 µs
 * where fs.promises.readFile costs 125 µs (measured on 50,000), so they are read synchronously,
 * yielding to the event loop every DRVS_PER_TURN so that leases and gossip are not held up.
 */
async function readDerivations (paths: string[], into: Map<string, Derivation>): Promise<void> {
  for (let i = 0; i < paths.length; i++) {
    const p = paths[i] as string
    try {
      into.set(p, parseDerivation(readFileSync(p), p))
    } catch (err) {
      throw new SubmissionError(`cannot read ${p}: ${(err as Error).message}`)
    }
    if ((i + 1) % DRVS_PER_TURN === 0) await new Promise(resolve => setImmediate(resolve))
  }
}

export async function planSubmission (store: StoreBackend, requested: string[], options: PlanOptions): Promise<SubmissionSpec> {
  const drvs = new Map<string, Derivation>()
  // The store checks the requested .drv files while they are read (the daemon answers in
  // parallel with the reading); an invalid one is reported as such, even if reading it failed too.
  const validity = store.isValid(requested)
  const reading = readDerivations([...new Set(requested)], drvs).then(() => undefined, (err: unknown) => err)
  const validDrvs = await validity
  const absent = requested.filter(p => !validDrvs.has(p))
  if (absent.length > 0) throw new SubmissionError(`not valid in the local store: ${absent.join(', ')}`)
  const readError = await reading
  if (readError !== undefined) throw readError

  const specs = new Map<string, JobSpec>()
  const substituted: JobSpec[] = []
  const jobs: JobSpec[] = []
  // Breadth-first by levels, one validity query per level.
  let level = [...new Set(requested)]
  while (level.length > 0) {
    const fresh = level.filter(p => !specs.has(p))
    await readDerivations(fresh.filter(p => !drvs.has(p)), drvs)
    const outputsOf = new Map(fresh.map(p => [p, [...outputPaths(drvs.get(p) as Derivation).values()]]))
    const allOutputs = [...outputsOf.values()].flat().filter(o => o !== '')
    const valid = await store.isValid(allOutputs)
    const cached = options.substitutable !== undefined ? await options.substitutable(allOutputs.filter(o => !valid.has(o))) : new Set<string>()
    const next: string[] = []
    for (const p of fresh) {
      const drv = drvs.get(p) as Derivation
      const outs = outputsOf.get(p) ?? []
      const spec: JobSpec = {
        drvPath: p,
        outputs: Object.fromEntries(outputPaths(drv)),
        inputJobs: [],
        system: drv.system,
        requiredFeatures: requiredSystemFeatures(drv)
      }
      specs.set(p, spec)
      const available = outs.length > 0 && outs.every(o => o !== '' && (valid.has(o) || cached.has(o)))
      if (available) {
        substituted.push(spec)
      } else {
        jobs.push(spec)
        next.push(...inputDrvPaths(drv))
      }
    }
    level = [...new Set(next)]
  }
  const jobSet = new Set(jobs.map(j => j.drvPath))
  for (const j of jobs) {
    j.inputJobs = inputDrvPaths(drvs.get(j.drvPath) as Derivation).filter(i => jobSet.has(i))
    const ms = options.estimate?.(j.drvPath)
    if (ms !== undefined) j.estimatedMs = ms
  }
  return {
    id: options.id,
    requested,
    jobs,
    substituted,
    priority: options.priority,
    ...(options.timeout !== undefined ? { timeout: options.timeout } : {}),
    ...(options.maxSilentTime !== undefined ? { maxSilentTime: options.maxSilentTime } : {}),
    ...(options.checkReproducible === true ? { check: true } : {}),
    ...(options.remoteOnly === true ? { remoteOnly: true } : {}),
    submittedAt: options.now
  }
}
