// How long derivations of each name took to build, normalised to speed factor 1: what the owner
// learnt from its accepted results, so that the planner gives new jobs an estimate (JobSpec
// estimatedMs). Kept under the derivation's name (`hello-2.12`) and its package name (`hello`),
// so that a new version starts from its predecessor's time. All of it is held in memory (at most
// MAX_HISTORY_ENTRIES, a few MB; a 50,000-job plan looks each job up without a database read)
// and written through to the state DB's 'time' sublevel.
import { derivationName, parseDrvName } from '../../protocols/nix/drv-name.ts'
import type { BuildTimeRecord, StateDb } from './state-db.ts'

/** Names and package names kept together; past this the least recently updated are dropped. */
export const MAX_HISTORY_ENTRIES = 100_000
/** Weight of a new sample in the smoothed time: new = (1 − w) · old + w · sample. */
export const SAMPLE_WEIGHT = 0.5

// Database key prefixes: a name and a package name can be the same string (`hello` has no version).
const NAME = 'name/'
const PNAME = 'pname/'

export interface BuildHistoryOptions {
  maxEntries?: number
}

export class BuildHistory {
  readonly maxEntries: number
  private readonly db: Pick<StateDb, 'loadBuildTimes' | 'putBuildTimes'>
  // Each least recently updated first (a Map keeps insertion order; an update re-inserts).
  private readonly byName = new Map<string, BuildTimeRecord>()
  private readonly byPackage = new Map<string, BuildTimeRecord>()

  constructor (db: Pick<StateDb, 'loadBuildTimes' | 'putBuildTimes'>, options: BuildHistoryOptions = {}) {
    this.db = db
    // Two at least: one record() writes a name and its package name.
    this.maxEntries = Math.max(2, options.maxEntries ?? MAX_HISTORY_ENTRIES)
  }

  /** Reads the history the previous runs of this node wrote. */
  async load (): Promise<void> {
    const records = (await this.db.loadBuildTimes()).filter(([, r]) => Number.isFinite(r?.ms) && r.ms >= 0 && Number.isFinite(r.at))
    records.sort((a, b) => a[1].at - b[1].at)
    this.byName.clear()
    this.byPackage.clear()
    for (const [key, r] of records) {
      if (key.startsWith(NAME)) this.byName.set(key.slice(NAME.length), r)
      else if (key.startsWith(PNAME)) this.byPackage.set(key.slice(PNAME.length), r)
    }
    this.db.putBuildTimes([], this.evict())
  }

  /** Derivation names held (package names aside). */
  get names (): number { return this.byName.size }

  /** Names and package names held. */
  get size (): number { return this.byName.size + this.byPackage.size }

  /** A build of `drvPath` took `ms` at speed factor 1: folded into its name's and package name's times. */
  record (drvPath: string, ms: number, now: number): void {
    const name = nameOf(drvPath)
    if (name === undefined || !Number.isFinite(ms) || ms < 0) return
    const pname = parseDrvName(name).name
    const put: Array<[string, BuildTimeRecord]> = [[NAME + name, update(this.byName, name, ms, now)]]
    if (pname !== '') put.push([PNAME + pname, update(this.byPackage, pname, ms, now)])
    this.db.putBuildTimes(put, this.evict())
  }

  /** The time at speed factor 1 of a derivation of this name, else of this package; undefined when neither was built. */
  estimate (drvPath: string): number | undefined {
    if (this.size === 0) return undefined
    const name = nameOf(drvPath)
    if (name === undefined) return undefined
    const exact = this.byName.get(name)
    if (exact !== undefined) return exact.ms
    const pname = parseDrvName(name).name
    return pname !== '' ? this.byPackage.get(pname)?.ms : undefined
  }

  /** Drops the least recently updated entries, of either kind, past the bound; returns their database keys. */
  private evict (): string[] {
    const gone: string[] = []
    while (this.size > this.maxEntries) {
      const n = first(this.byName)
      const p = first(this.byPackage)
      if (n !== undefined && (p === undefined || n[1].at <= p[1].at)) {
        this.byName.delete(n[0])
        gone.push(NAME + n[0])
      } else if (p !== undefined) {
        this.byPackage.delete(p[0])
        gone.push(PNAME + p[0])
      }
    }
    return gone
  }
}

/** The smoothed record of `key` with one more sample, moved to the end (most recent). */
function update (map: Map<string, BuildTimeRecord>, key: string, ms: number, now: number): BuildTimeRecord {
  const old = map.get(key)
  const r = old === undefined
    ? { ms: Math.round(ms), count: 1, at: now }
    : { ms: Math.round((1 - SAMPLE_WEIGHT) * old.ms + SAMPLE_WEIGHT * ms), count: old.count + 1, at: now }
  map.delete(key)
  map.set(key, r)
  return r
}

function first<V> (map: Map<string, V>): [string, V] | undefined {
  for (const e of map) return e
  return undefined
}

function nameOf (drvPath: string): string | undefined {
  try {
    return derivationName(drvPath)
  } catch {
    return undefined
  }
}
