// The simulator's agenda: a binary min-heap of timed events. Events at the same time come out in
// the order they were scheduled (by sequence number), so a run is a pure function of its inputs.

export interface QueuedEvent<T> {
  time: number
  seq: number
  item: T
}

export class EventQueue<T> {
  private readonly heap: Array<QueuedEvent<T>> = []
  private nextSeq = 0

  get size (): number {
    return this.heap.length
  }

  push (time: number, item: T): void {
    const e = { time, seq: this.nextSeq++, item }
    const h = this.heap
    let i = h.length
    h.push(e)
    while (i > 0) {
      const parent = (i - 1) >> 1
      const p = h[parent] as QueuedEvent<T>
      if (!before(e, p)) break
      h[i] = p
      i = parent
    }
    h[i] = e
  }

  peek (): QueuedEvent<T> | undefined {
    return this.heap[0]
  }

  pop (): QueuedEvent<T> | undefined {
    const h = this.heap
    const top = h[0]
    if (top === undefined) return undefined
    const last = h.pop() as QueuedEvent<T>
    if (h.length === 0) return top
    let i = 0
    const n = h.length
    for (;;) {
      const l = 2 * i + 1
      if (l >= n) break
      const r = l + 1
      let c = l
      if (r < n && before(h[r] as QueuedEvent<T>, h[l] as QueuedEvent<T>)) c = r
      const child = h[c] as QueuedEvent<T>
      if (!before(child, last)) break
      h[i] = child
      i = c
    }
    h[i] = last
    return top
  }
}

function before<T> (a: QueuedEvent<T>, b: QueuedEvent<T>): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq)
}
