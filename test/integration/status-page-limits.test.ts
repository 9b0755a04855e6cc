// The status page's event stream (/events of the HTTP listener) at its limits, against an
// in-process listener with a made-up node behind it: at most SSE_MAX_CLIENTS streams, more refused
// with 503 while the page is still served, a freed stream served again; a client that stops reading
// dropped. The page itself, in Chromium on a test mesh: test/e2e/status-page.test.ts.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { connect } from 'node:net'
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises'
import { SSE_MAX_BUFFERED_BYTES, SSE_MAX_CLIENTS } from '../../node/observe/events.ts'
import { startHttpListener } from '../../node/observe/http-listener.ts'
import { NodeMetrics } from '../../node/observe/metrics.ts'
import type { StatusReport } from '../../node/mesh/reports.ts'
import { waitFor, within } from '../helpers/wait.ts'

const idleMetrics = (): NodeMetrics => new NodeMetrics({ slots: () => ({ total: 1, busy: 1 }), jobStates: () => new Map(), peers: () => 0, localBuilds: () => ({ built: 0, failed: 0 }) })

describe('the status page\'s event stream limits', { timeout: 60_000 }, () => {
  it(`holds at most ${SSE_MAX_CLIENTS} event streams and refuses more with 503, the page still served`, async () => {
    // A node building one derivation that prints a line a second.
    const drv = `/nix/store/${'a'.repeat(32)}-ticker.drv`
    const self = {
      peerId: 'self', addresses: [], systems: ['x86_64-linux'], features: [], mandatoryFeatures: [], maxJobs: 1, running: 1, queued: 0, speedFactor: 1,
      load: 0, freeDiskBytes: 0, diskLow: false, building: [drv], lastSeen: new Date().toISOString(), membership: 'closed' as const
    }
    const status = (): StatusReport => ({ self, peers: [], signQueue: 0, submissions: [], counters: { built: 0, failed: 0, stolen: 0 }, penalties: [], refusedStreams: {} })
    const listener = await startHttpListener(idleMetrics(), { host: '127.0.0.1', port: 0 }, {
      status,
      submissionReport: () => undefined,
      runningHere: () => [drv],
      followLog: async function * (_drv, signal) {
        for (let i = 0; !signal.aborted; i++) {
          yield { type: 'lines' as const, lines: [`tick-${i}`] }
          await sleep(1_000, undefined, { signal }).catch(() => {})
        }
      }
    })
    const url = `${listener.url}/`
    const aborts: AbortController[] = []
    const open = async (): Promise<Response> => {
      const ctl = new AbortController()
      aborts.push(ctl)
      return await fetch(`${url}events`, { signal: ctl.signal })
    }
    try {
      for (let i = 0; i < SSE_MAX_CLIENTS; i++) {
        const r = await open()
        assert.equal(r.status, 200, `stream ${i + 1}`)
        assert.match(r.headers.get('content-type') ?? '', /^text\/event-stream/)
      }
      const refused = await fetch(`${url}events`, { signal: AbortSignal.timeout(10_000) })
      assert.equal(refused.status, 503)
      await refused.text()
      const page = await fetch(url, { signal: AbortSignal.timeout(10_000) })
      assert.equal(page.status, 200)
      assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'sha256-/)
      await page.text()
      // A client that goes (a page closed) frees its stream shortly.
      aborts.shift()?.abort()
      await waitFor(async () => {
        const ctl = new AbortController()
        const r = await fetch(`${url}events`, { signal: ctl.signal })
        ctl.abort()
        await r.body?.cancel().catch(() => {})
        return r.status === 200
      }, 10_000, 'the stream a client left to be served again')
    } finally {
      for (const c of aborts) c.abort()
      await listener.close()
    }
  })
})

describe('the status page\'s event stream', { timeout: 60_000 }, () => {
  it('drops a client that stops reading, and stops following logs once no client is left', async () => {
    // A node at its busiest: builds writing as fast as they can, failures with long tails, a
    // state that changes at every look.
    const drvs = Array.from({ length: 32 }, (_, i) => `/nix/store/${String(i % 10).repeat(32)}-flood-${i}.drv`)
    const long = (n: number): string[] => Array.from({ length: n }, () => 'x'.repeat(4000))
    const line = 'y'.repeat(1000)
    let following = 0
    let looks = 0
    let sentBytes = 0
    const self = {
      peerId: 'self', addresses: [], systems: ['x86_64-linux'], features: [], mandatoryFeatures: [], maxJobs: 32, running: 32, queued: 0, speedFactor: 1,
      load: 0, freeDiskBytes: 0, diskLow: false, building: drvs, lastSeen: new Date().toISOString(), membership: 'closed' as const
    }
    const submission = { id: 's1', state: 'running' as const, counts: { failed: 10 }, submittedAt: new Date().toISOString() }
    const status = (): StatusReport => ({ self: { ...self, load: looks++ }, peers: [], signQueue: 0, submissions: [submission], counters: { built: 0, failed: 0, stolen: 0 }, penalties: [], refusedStreams: {} })
    const metrics = new NodeMetrics({ slots: () => ({ total: 32, busy: 32 }), jobStates: () => new Map(), peers: () => 0, localBuilds: () => ({ built: 0, failed: 0 }) })
    const listener = await startHttpListener(metrics, { host: '127.0.0.1', port: 0 }, {
      status,
      submissionReport: () => ({
        ...submission,
        results: drvs.slice(0, 10).map((d, i) => ({ drvPath: `${d}${i}`, requested: true, state: 'failed' as const, outputs: {}, failure: { kind: 'build-failed' as const, message: `m${looks}`, logTail: long(20) } }))
      }),
      runningHere: () => drvs,
      followLog: async function * (_drv, signal) {
        following++
        try {
          while (!signal.aborted && sentBytes < 1024 * 1024 * 1024) {
            sentBytes += 512 * line.length
            yield { type: 'lines' as const, lines: Array.from({ length: 512 }, () => line) }
            await yieldToLoop()
          }
        } finally { following-- }
      }
    })
    const sock = connect(Number(new URL(listener.url).port), '127.0.0.1')
    try {
      sock.on('error', () => {})
      sock.write('GET /events HTTP/1.1\r\nHost: x\r\n\r\n')
      // Never read: what the server writes piles up in the kernel's buffers, then in its own.
      // (Not reading, the client does not see the close either: the server's side tells.)
      sock.pause()
      await waitFor(() => following > 0, 10_000, 'the stream to begin')
      await waitFor(() => listener.connectionStats().open === 0 && following === 0, 40_000, 'the server to drop the client that does not read, and follow no more')
      assert.ok(sentBytes > SSE_MAX_BUFFERED_BYTES)
      const ctl = new AbortController()
      const r = await fetch(`${listener.url}/events`, { signal: ctl.signal })
      assert.equal(r.status, 200, 'a new client is served after the dropped one')
      // A client that reads is not dropped although the builds write megabytes a second.
      const reader = r.body?.getReader() ?? assert.fail('no body')
      let got = 0
      const until = Date.now() + 3_000
      while (Date.now() < until) {
        const { value, done } = await within(reader.read(), 5_000, 'the stream to go on')
        assert.ok(done !== true, 'the server closed the stream of a client that reads')
        got += value.length
      }
      assert.ok(got > 64 * 1024, `the reading client got ${got} bytes in 3 s`)
      ctl.abort()
    } finally {
      sock.destroy()
      await listener.close()
    }
  })
})
