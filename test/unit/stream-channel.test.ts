// StreamChannel on an in-memory stream: reads are bounded by their timeout even when the caller
// passes a signal, the caller's signal still cuts them short, a run delivered in tiny chunks
// is read in linear time, and a finished read holds no memory for the rest of its timeout.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { Stream } from '@libp2p/interface'
import { StreamChannel, TimeoutError } from '../../protocols/mesh/stream-channel.ts'
import { MemoryStream } from '../helpers/memory-stream.ts'
import { within } from '../helpers/wait.ts'

const anything = (v: unknown): unknown => v
const channel = (): { stream: MemoryStream, ch: StreamChannel } => {
  const stream = new MemoryStream()
  return { stream, ch: new StreamChannel(stream as unknown as Stream) }
}

describe('StreamChannel', () => {
  it('times out a read on a silent peer even when a signal is passed (the thief\'s path-info and NAR headers)', async () => {
    const { stream, ch } = channel()
    stream.deliver(Buffer.from([0, 0, 0, 10, 0x7b])) // a frame header and one byte of ten, then silence
    const caller = new AbortController()
    const err = await within(ch.readMessage(anything, { maxBytes: 1024, timeoutMs: 200, signal: caller.signal }).then(
      () => assert.fail('read a message from a silent peer'), (e: unknown) => e as Error), 10_000, 'the read to time out')
    assert.ok(err instanceof TimeoutError, `${err.name}: ${err.message}`)
  })

  it('ends a read when the caller\'s signal aborts, before the timeout', async () => {
    const { ch } = channel()
    const caller = new AbortController()
    setTimeout(() => { caller.abort() }, 50)
    const err = await within(ch.readMessage(anything, { maxBytes: 1024, timeoutMs: 60_000, signal: caller.signal }).then(
      () => assert.fail('read'), (e: unknown) => e as Error), 10_000, 'the read to end')
    assert.equal(err.name, 'TimeoutError')
  })

  it('times out a raw read that stalls, with or without a signal', async () => {
    const { stream, ch } = channel()
    stream.deliver(Buffer.alloc(10))
    const read = async (): Promise<number> => { let n = 0; for await (const p of ch.readRaw(100, { idleTimeoutMs: 200, signal: new AbortController().signal })) n += p.byteLength; return n }
    await assert.rejects(within(read(), 10_000, 'the raw read to time out'), { name: 'TimeoutError' })
  })

  it('reads 400 000 one-byte chunks in linear time', async () => {
    const { stream, ch } = channel()
    const n = 400_000
    const one = Buffer.alloc(1, 7)
    for (let i = 0; i < n; i++) stream.deliver(one)
    let got = 0
    // Quadratic (Array.shift on the buffered chunks) took ~35 s here; linear takes well under 1 s.
    await within((async () => { for await (const p of ch.readRaw(n, { idleTimeoutMs: 5_000 })) got += p.byteLength })(), 15_000, 'the chunks to be read')
    assert.equal(got, n)
  })
})

describe('StreamChannel memory', () => {
  it('releases each read\'s timer when the read ends, not when its timeout would fire', async () => {
    setFlagsFromString('--expose-gc')
    const gc = runInNewContext('gc') as () => void
    const frame = Buffer.from([0, 0, 0, 7, ...Buffer.from('{"a":1}')])
    gc()
    const before = process.memoryUsage().heapUsed
    for (let i = 0; i < 50_000; i++) {
      const { stream, ch } = channel()
      stream.deliver(frame)
      await ch.readMessage(anything, { maxBytes: 1024, timeoutMs: 60_000 })
    }
    gc()
    const growth = process.memoryUsage().heapUsed - before
    // With AbortSignal.timeout each finished read stayed reachable for its 60 s: ~50 MiB here.
    assert.ok(growth < 16 * 1024 * 1024, `heap grew by ${(growth / 1048576).toFixed(1)} MiB over 50 000 reads`)
  })
})
