// A min-heap of small integers (ranks), for the baselines' ready queues.
export class IntHeap {
  private h: number[] = []

  get size (): number { return this.h.length }

  /** Moves every element of `other` here; O(1) when this heap is empty. */
  absorb (other: IntHeap): void {
    if (other.h.length === 0) return
    if (this.h.length === 0) {
      const t = this.h
      this.h = other.h
      other.h = t
      return
    }
    for (const x of other.h) this.push(x)
    other.h = []
  }

  push (x: number): void {
    const h = this.h
    let i = h.length
    h.push(x)
    while (i > 0) {
      const p = (i - 1) >> 1
      const v = h[p] as number
      if (v <= x) break
      h[i] = v
      i = p
    }
    h[i] = x
  }

  peek (): number | undefined { return this.h[0] }

  pop (): number | undefined {
    const h = this.h
    const top = h[0]
    if (top === undefined) return undefined
    const last = h.pop() as number
    if (h.length === 0) return top
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      if (l >= h.length) break
      const r = l + 1
      const c = r < h.length && (h[r] as number) < (h[l] as number) ? r : l
      if ((h[c] as number) >= last) break
      h[i] = h[c] as number
      i = c
    }
    h[i] = last
    return top
  }
}
