// Per-peer request rates: a GCRA (generic cell rate algorithm, the token bucket kept as one
// timestamp per key). Pure: the caller passes the time, so tests need no clock.
//
// Each key has a theoretical arrival time `tat`: when its bucket would be full again. A request
// at `now` is allowed when tat - burst·interval <= now, and then moves tat on by one interval.
// So `burst` requests may come at once, then one per interval.

export interface RateLimit {
  /** Sustained requests per second. */
  perSecond: number
  /** Requests allowed at once, after a quiet period. */
  burst: number
}

/** Keys tracked at most; beyond it, keys whose bucket is full again are forgotten first. */
export const RATE_LIMITER_MAX_KEYS = 4096

export class RateLimiter {
  private readonly intervalMs: number
  private readonly toleranceMs: number
  private readonly maxKeys: number
  private readonly tat = new Map<string, number>()
  private readonly refusedBy = new Map<string, number>()
  /** Requests refused since start, over all keys. */
  refused = 0

  constructor (limit: RateLimit, maxKeys = RATE_LIMITER_MAX_KEYS) {
    if (!(limit.perSecond > 0) || !(limit.burst >= 1)) throw new RangeError(`bad rate limit ${JSON.stringify(limit)}`)
    this.intervalMs = 1000 / limit.perSecond
    this.toleranceMs = this.intervalMs * (limit.burst - 1)
    this.maxKeys = maxKeys
  }

  /** Counts one request of `key` at `now` (ms); false when it is over the limit (and then not counted). */
  take (key: string, now: number): boolean {
    const tat = Math.max(this.tat.get(key) ?? now, now)
    if (tat - this.toleranceMs > now) {
      this.refused++
      this.refusedBy.set(key, (this.refusedBy.get(key) ?? 0) + 1)
      return false
    }
    if (!this.tat.has(key) && this.tat.size >= this.maxKeys) this.evict(now)
    this.tat.delete(key) // re-inserted last: Map order is then least recently used first
    this.tat.set(key, tat + this.intervalMs)
    return true
  }

  /** Requests of `key` refused so far. */
  refusedFor (key: string): number {
    return this.refusedBy.get(key) ?? 0
  }

  private evict (now: number): void {
    for (const [k, t] of this.tat) if (t <= now) this.tat.delete(k)
    // Every bucket still busy: drop the least recently used one (it may then burst once more).
    if (this.tat.size >= this.maxKeys) {
      const oldest = this.tat.keys().next().value
      if (oldest !== undefined) this.tat.delete(oldest)
    }
    while (this.refusedBy.size >= this.maxKeys) {
      const oldest = this.refusedBy.keys().next().value
      if (oldest === undefined) break
      this.refusedBy.delete(oldest)
    }
  }
}
