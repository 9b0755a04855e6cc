// The simulator's agenda: a binary min-heap of timed events. Events at the same time come out in
// the order they were scheduled (by sequence number), so a run is a pure function of its inputs.
// Times and sequence numbers are kept in typed arrays beside the items: a run pops tens of
// millions of events, and the comparisons then read contiguous memory.

export class EventQueue<T> {
  private times = new Float64Array(16)
  private seqs = new Float64Array(16)
  private items: Array<T | undefined> = []
  private n = 0
  private nextSeq = 0

  get size (): number {
    return this.n
  }

  push (time: number, item: T): void {
    if (this.n === this.times.length) this.grow()
    const times = this.times
    const seqs = this.seqs
    const items = this.items
    const seq = this.nextSeq++
    let i = this.n++
    while (i > 0) {
      const parent = (i - 1) >> 1
      const pt = times[parent] as number
      if (!(time < pt || (time === pt && seq < (seqs[parent] as number)))) break
      times[i] = pt
      seqs[i] = seqs[parent] as number
      items[i] = items[parent]
      i = parent
    }
    times[i] = time
    seqs[i] = seq
    items[i] = item
  }

  /** The time of the next event; undefined when there is none. */
  peekTime (): number | undefined {
    return this.n === 0 ? undefined : this.times[0]
  }

  /** Takes out the next event's item (its time is peekTime()'s). */
  pop (): T | undefined {
    if (this.n === 0) return undefined
    const times = this.times
    const seqs = this.seqs
    const items = this.items
    const top = items[0]
    const n = --this.n
    const lt = times[n] as number
    const ls = seqs[n] as number
    const li = items[n]
    items[n] = undefined
    if (n > 0) {
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        if (l >= n) break
        const r = l + 1
        let c = l
        if (r < n) {
          const rt = times[r] as number
          const lft = times[l] as number
          if (rt < lft || (rt === lft && (seqs[r] as number) < (seqs[l] as number))) c = r
        }
        const ct = times[c] as number
        if (!(ct < lt || (ct === lt && (seqs[c] as number) < ls))) break
        times[i] = ct
        seqs[i] = seqs[c] as number
        items[i] = items[c]
        i = c
      }
      times[i] = lt
      seqs[i] = ls
      items[i] = li
    }
    return top
  }

  private grow (): void {
    const times = new Float64Array(this.times.length * 2)
    times.set(this.times)
    this.times = times
    const seqs = new Float64Array(this.seqs.length * 2)
    seqs.set(this.seqs)
    this.seqs = seqs
  }
}
