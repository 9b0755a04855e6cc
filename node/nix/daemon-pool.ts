// A small pool of daemon connections, each serving one caller at a time. Queries share at most
// `size` connections; builds and NAR streams take a connection of their own (they hold it as
// long as the build runs or the peer reads). A connection is replaced after `recycleAfter`
// requests or MAX_AGE_MS, and closed after IDLE_MS unused: the daemon keeps temporary roots per
// connection (every path a build or an import touched), which keep those paths from the garbage
// collector until the connection ends. One that anything went wrong on is closed at once.
import { DaemonConnection, type DaemonOpenOptions } from './daemon-connection.ts'
import { OperationAborted } from './store-backend.ts'

export const MAX_AGE_MS = 60_000
export const IDLE_MS = 10_000
/**
 * Idle connections kept, per query connection: builds, exports and imports take connections of
 * their own, and a daemon started for each one (~5 ms here, more CPU in the daemon) was 3 % of
 * an owner's CPU on 600 zero-length jobs when only `size` were kept.
 */
export const IDLE_PER_QUERY_SLOT = 2

export interface PoolStats {
  opened: number
  recycled: number
  /** Closed after a failure: the daemon died, it sent something unreadable, or an abort. */
  lost: number
}

export interface Lease {
  readonly conn: DaemonConnection
  /** Gives the connection back; `broken` closes it instead. */
  release: (broken: boolean) => void
}

interface Waiter {
  resolve: (lease: Lease) => void
  reject: (err: Error) => void
  signal: AbortSignal | undefined
  onAbort: () => void
}

export class DaemonPool {
  readonly stats: PoolStats = { opened: 0, recycled: 0, lost: 0 }
  private readonly open: DaemonOpenOptions
  private readonly size: number
  private readonly recycleAfter: number
  private readonly idle: DaemonConnection[] = []
  private readonly born = new WeakMap<DaemonConnection, number>()
  private readonly idleSince = new WeakMap<DaemonConnection, number>()
  private sweeper: NodeJS.Timeout | undefined
  private readonly waiters: Waiter[] = []
  private readonly all = new Set<DaemonConnection>()
  private readonly closing = new Set<Promise<void>>()
  /** Query leases out now. */
  private busy = 0
  private closed = false

  constructor (open: DaemonOpenOptions, size: number, recycleAfter: number) {
    this.open = open
    this.size = size
    this.recycleAfter = recycleAfter
  }

  /** A connection for queries (waits while `size` are out) or, with `own`, one for a build. */
  async acquire (signal?: AbortSignal, own = false): Promise<Lease> {
    signal?.throwIfAborted()
    if (this.closed) throw new Error('the store is closed')
    if (!own && this.busy >= this.size) {
      return await new Promise<Lease>((resolve, reject) => {
        const waiter: Waiter = {
          resolve,
          reject,
          signal,
          onAbort: () => {
            this.waiters.splice(this.waiters.indexOf(waiter), 1)
            reject(new OperationAborted('waiting for a daemon connection', signal?.reason))
          }
        }
        signal?.addEventListener('abort', waiter.onAbort, { once: true })
        this.waiters.push(waiter)
      })
    }
    if (!own) this.busy++
    try {
      return this.lease(this.idle.pop() ?? await this.connect(), own)
    } catch (err) {
      if (!own) this.release()
      throw err
    }
  }

  close (): void {
    this.closed = true
    if (this.sweeper != null) clearInterval(this.sweeper)
    for (const c of this.all) c.close()
    this.all.clear()
    this.idle.length = 0
    for (const w of this.waiters.splice(0)) w.reject(new Error('the store is closed'))
  }

  private async connect (): Promise<DaemonConnection> {
    const conn = await DaemonConnection.open(this.open)
    this.stats.opened++
    if (this.closed) {
      conn.close()
      throw new Error('the store is closed')
    }
    this.all.add(conn)
    this.born.set(conn, Date.now())
    return conn
  }

  private lease (conn: DaemonConnection, own: boolean): Lease {
    let done = false
    return {
      conn,
      release: (broken) => {
        if (done) return
        done = true
        const old = conn.requests >= this.recycleAfter || Date.now() - (this.born.get(conn) ?? 0) >= MAX_AGE_MS
        if (broken || old || this.closed || this.idle.length >= this.size * IDLE_PER_QUERY_SLOT) {
          if (broken) this.stats.lost++
          else if (old) this.stats.recycled++
          this.drop(conn)
        } else {
          this.idleSince.set(conn, Date.now())
          this.idle.push(conn)
          this.sweepLater()
        }
        if (!own) this.release()
      }
    }
  }

  private drop (conn: DaemonConnection): void {
    conn.close()
    this.all.delete(conn)
    this.closing.add(conn.gone)
    void conn.gone.then(() => { this.closing.delete(conn.gone) })
  }

  /**
   * Closes the idle connections and waits until every connection closed so far is gone: after
   * it, no temporary root of this pool's is left but those of connections in use.
   */
  async releaseRoots (): Promise<void> {
    for (const conn of this.idle.splice(0)) this.drop(conn)
    await Promise.all([...this.closing])
  }

  /** Closes connections left unused for IDLE_MS, so that an idle node holds no daemon and no roots. */
  private sweepLater (): void {
    if (this.sweeper != null) return
    this.sweeper = setInterval(() => {
      const now = Date.now()
      for (let i = this.idle.length - 1; i >= 0; i--) {
        const conn = this.idle[i] as DaemonConnection
        if (now - (this.idleSince.get(conn) ?? now) < IDLE_MS) continue
        this.idle.splice(i, 1)
        this.stats.recycled++
        this.drop(conn)
      }
      if (this.idle.length === 0) {
        clearInterval(this.sweeper)
        this.sweeper = undefined
      }
    }, IDLE_MS / 2)
    this.sweeper.unref()
  }

  /** A query lease ended: the next waiter gets a connection. */
  private release (): void {
    const next = this.waiters.shift()
    if (next == null) {
      this.busy--
      return
    }
    next.signal?.removeEventListener('abort', next.onAbort)
    const conn = this.idle.pop()
    const leased = conn != null ? Promise.resolve(conn) : this.connect()
    leased.then(c => { next.resolve(this.lease(c, false)) }, (err: Error) => {
      next.reject(err)
      this.release()
    })
  }
}
