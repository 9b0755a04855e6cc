// Peers cut off for misbehaving. Pure: time is an argument. The network closes a boxed peer's
// connections and its connection gater refuses it until the penalty ends.
//
// Two kinds of offence: a lie about data (a NAR whose bytes do not match the hash the peer gave)
// boxes at once; a malformed message boxes only after `strikes` of them within `strikeWindowMs`,
// so that one odd message (a newer peer, a bug) is logged rather than punished. A peer boxed
// again soon after its last penalty gets twice as long, up to `maxDurationMs`.

export type Offence = 'bad-data' | 'invalid-message'

export interface Penalty {
  peer: string
  reason: string
  /** When the penalty started and ends, ms. */
  since: number
  until: number
  /** How many times this peer was boxed (doubling the duration each time, within `forgetAfterMs`). */
  count: number
}

export interface PenaltyBoxOptions {
  durationMs: number
  maxDurationMs: number
  strikes: number
  strikeWindowMs: number
  /** After this long without a penalty, a peer's past ones no longer lengthen the next. */
  forgetAfterMs: number
  /** Peers tracked at most (penalties and strikes); the oldest records go first. */
  maxPeers: number
}

export class PenaltyBox {
  private readonly opts: PenaltyBoxOptions
  private readonly boxed = new Map<string, Penalty>()
  private readonly strikes = new Map<string, number[]>()

  constructor (opts: PenaltyBoxOptions) {
    this.opts = opts
  }

  /**
   * Records an offence of `peer` at `now`. Returns the penalty when the peer is now boxed (newly
   * or for longer), undefined when it was only a strike.
   */
  offence (peer: string, kind: Offence, reason: string, now: number): Penalty | undefined {
    if (kind === 'invalid-message') {
      const recent = (this.strikes.get(peer) ?? []).filter(t => t > now - this.opts.strikeWindowMs)
      recent.push(now)
      this.strikes.delete(peer)
      if (recent.length < this.opts.strikes) {
        this.strikes.set(peer, recent)
        this.trim(this.strikes)
        return undefined
      }
    }
    this.strikes.delete(peer)
    const previous = this.boxed.get(peer)
    const repeat = previous !== undefined && now - previous.until < this.opts.forgetAfterMs
    const count = repeat ? previous.count + 1 : 1
    const duration = Math.min(this.opts.durationMs * 2 ** (count - 1), this.opts.maxDurationMs)
    const penalty: Penalty = { peer, reason, since: now, until: Math.max(now + duration, previous?.until ?? 0), count }
    this.boxed.delete(peer)
    this.boxed.set(peer, penalty)
    this.trim(this.boxed)
    return penalty
  }

  /** The penalty `peer` serves at `now`, if any. */
  penalty (peer: string, now: number): Penalty | undefined {
    const p = this.boxed.get(peer)
    return p !== undefined && p.until > now ? p : undefined
  }

  isBoxed (peer: string, now: number): boolean {
    return this.penalty(peer, now) !== undefined
  }

  /** Penalties in force at `now`, soonest to end first. */
  active (now: number): Penalty[] {
    return [...this.boxed.values()].filter(p => p.until > now).sort((a, b) => a.until - b.until)
  }

  private trim<V> (map: Map<string, V>): void {
    while (map.size > this.opts.maxPeers) {
      const oldest = map.keys().next().value
      if (oldest === undefined) break
      map.delete(oldest)
    }
  }
}
