// The one way meshbuild reads and writes a libp2p stream: length-prefixed JSON messages with a
// size limit and a timeout, and raw byte runs (NARs) with backpressure both ways.
//
// Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. Raw runs carry no
// framing; their length is announced by the message before them.
//
// libp2p 3 streams give no read backpressure by themselves: the channel pauses the stream while
// more than `highWater` bytes wait unread and resumes once the reader has taken them. Writes wait
// for the 'drain' event (not onDrain(), whose promise resolves only once).
import { pEvent } from 'p-event'
import type { Stream } from '@libp2p/interface'

export class ProtocolError extends Error {
  override name = 'ProtocolError'
}

export class MessageTooLargeError extends ProtocolError {
  override name = 'MessageTooLargeError'
}

/** A frame whose body is not JSON: the peer's fault, unlike a stream that ends or times out. */
export class MalformedMessageError extends ProtocolError {
  override name = 'MalformedMessageError'
}

export class StreamEndedError extends ProtocolError {
  override name = 'StreamEndedError'
}

export class TimeoutError extends Error {
  override name = 'TimeoutError'
}

/** Something that checks a decoded message and returns it typed, or throws ProtocolError. */
export type Validator<T> = (value: unknown) => T

export interface ReadOptions {
  maxBytes: number
  signal?: AbortSignal
  /** Milliseconds to wait for the whole message, whether or not a signal is given. */
  timeoutMs?: number
}

type Chunk = Uint8Array | { subarray: () => Uint8Array }

const DEFAULT_TIMEOUT_MS = 30_000
const EMPTY = new Uint8Array(0)
const HIGH_WATER = 1024 * 1024
// After pause() the remote may still send what yamux's window allows (up to 16 MiB by default);
// the stream resets itself if its paused buffer outgrows this, so it must hold a full window.
const PAUSED_BUFFER_LIMIT = 24 * 1024 * 1024

export class StreamChannel {
  readonly stream: Stream
  // A queue with a head index: Array.shift() is linear in the length, and a peer sending a NAR
  // in 1-byte frames (up to a muxer window of them while paused) made reading it quadratic.
  private chunks: Uint8Array[] = []
  private head = 0
  private buffered = 0
  private ended = false
  private error: Error | undefined
  private wake: (() => void) | undefined
  private readonly highWater: number

  constructor (stream: Stream, options: { highWater?: number } = {}) {
    this.stream = stream
    this.highWater = options.highWater ?? HIGH_WATER
    stream.maxReadBufferLength = Math.max(stream.maxReadBufferLength, PAUSED_BUFFER_LIMIT)
    stream.addEventListener('message', (evt) => {
      const data = evt.data as Chunk
      const bytes = data instanceof Uint8Array ? data : data.subarray()
      this.chunks.push(bytes)
      this.buffered += bytes.byteLength
      // Deferred: resume() delivers the paused backlog to this listener and only then tells the
      // muxer to resume; pausing inside that delivery would be undone by it, leaving the muxer
      // granting window while the stream buffers everything until it resets itself.
      if (this.buffered > this.highWater) queueMicrotask(() => { this.pauseIfFull() })
      this.notify()
    })
    stream.addEventListener('remoteCloseWrite', () => { this.ended = true; this.notify() })
    stream.addEventListener('close', (evt) => {
      this.ended = true
      if (evt.error != null) this.error = evt.error
      this.notify()
    })
  }

  /** Sends bytes, waiting for the stream to drain when its buffer is full. */
  async write (data: Uint8Array, signal?: AbortSignal): Promise<void> {
    if (!this.stream.send(data)) {
      await pEvent(this.stream, 'drain', { rejectionEvents: ['close'], signal })
    }
  }

  async writeMessage (message: unknown, signal?: AbortSignal): Promise<void> {
    const body = Buffer.from(JSON.stringify(message), 'utf8')
    const frame = Buffer.allocUnsafe(4 + body.byteLength)
    frame.writeUInt32BE(body.byteLength, 0)
    body.copy(frame, 4)
    await this.write(frame, signal)
  }

  /** Reads one message, rejecting it if longer than maxBytes or not valid. */
  async readMessage<T> (validate: Validator<T>, options: ReadOptions): Promise<T> {
    return await this.withTimeout(options, async (signal) => {
      const header = await this.readExactly(4, signal)
      const length = Buffer.from(header.buffer, header.byteOffset, 4).readUInt32BE(0)
      if (length > options.maxBytes) {
        throw new MessageTooLargeError(`message of ${length} bytes exceeds the limit of ${options.maxBytes}`)
      }
      const body = await this.readExactly(length, signal)
      let parsed: unknown
      try {
        parsed = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'))
      } catch (err) {
        throw new MalformedMessageError(`message is not JSON: ${(err as Error).message}`)
      }
      return validate(parsed)
    })
  }

  /**
   * Yields exactly `length` raw bytes as they arrive. Pausing between chunks (a disk write, a
   * hash) holds the sender back through the stream's flow control.
   */
  async * readRaw (length: number, options: { idleTimeoutMs?: number, signal?: AbortSignal } = {}): AsyncGenerator<Uint8Array> {
    let left = length
    while (left > 0) {
      if (options.signal?.aborted === true) throw new TimeoutError(`aborted with ${left} of ${length} bytes unread`)
      // A timer only when there is something to wait for: not one per buffered chunk.
      if (this.head === this.chunks.length) {
        await withDeadline(options.idleTimeoutMs ?? DEFAULT_TIMEOUT_MS, options.signal, async (signal) => {
          await this.waitForData(signal, `${left} of ${length} bytes`)
        })
      }
      const chunk = this.take(left)
      left -= chunk.byteLength
      yield chunk
    }
  }

  /** Closes this side for writing once everything sent is flushed; the peer sees the end. */
  async close (): Promise<void> {
    try {
      await this.stream.close()
    } catch (err) {
      this.stream.abort(err as Error)
    }
  }

  abort (err: Error): void {
    this.stream.abort(err)
  }

  private async readExactly (n: number, signal: AbortSignal): Promise<Uint8Array> {
    const parts: Uint8Array[] = []
    let got = 0
    while (got < n) {
      await this.waitForData(signal, `${n - got} more bytes of a ${n}-byte read`)
      const chunk = this.take(n - got)
      parts.push(chunk)
      got += chunk.byteLength
    }
    return parts.length === 1 && parts[0] !== undefined ? parts[0] : Buffer.concat(parts)
  }

  private pauseIfFull (): void {
    if (this.buffered > this.highWater && this.stream.readStatus === 'readable') this.stream.pause()
  }

  private take (max: number): Uint8Array {
    const first = this.chunks[this.head]
    if (first === undefined) throw new StreamEndedError('nothing buffered')
    let chunk: Uint8Array
    if (first.byteLength <= max) {
      this.chunks[this.head++] = EMPTY
      chunk = first
      if (this.head === this.chunks.length) {
        this.chunks = []
        this.head = 0
      } else if (this.head > 1024 && this.head * 2 > this.chunks.length) {
        this.chunks = this.chunks.slice(this.head)
        this.head = 0
      }
    } else {
      chunk = first.subarray(0, max)
      this.chunks[this.head] = first.subarray(max)
    }
    this.buffered -= chunk.byteLength
    if (this.buffered <= this.highWater / 2 && this.stream.readStatus === 'paused') this.stream.resume()
    return chunk
  }

  private async waitForData (signal: AbortSignal, what: string): Promise<void> {
    while (this.head === this.chunks.length) {
      if (this.error != null) throw new StreamEndedError(`stream failed while waiting for ${what}: ${this.error.message}`)
      if (this.ended) throw new StreamEndedError(`stream ended while waiting for ${what}`)
      if (signal.aborted) throw new TimeoutError(`timed out waiting for ${what}`)
      await new Promise<void>((resolve) => {
        const done = (): void => { signal.removeEventListener('abort', done); this.wake = undefined; resolve() }
        this.wake = done
        signal.addEventListener('abort', done, { once: true })
      })
    }
  }

  private notify (): void {
    this.wake?.()
  }

  /** Both bound the read: the caller's signal (a cancelled job) and the timeout (a peer gone silent). */
  private async withTimeout<T> (options: ReadOptions, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return await withDeadline(options.timeoutMs ?? DEFAULT_TIMEOUT_MS, options.signal, fn)
  }
}

/**
 * Runs `fn` with a signal that aborts after `ms` or when `outer` does. The timer is cleared when
 * `fn` ends: AbortSignal.timeout() would keep each signal alive for its whole timeout (≈1 KiB per
 * read held 15 s, seen growing the heap by 75 MiB in the fuzz run).
 */
async function withDeadline<T> (ms: number, outer: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController()
  const timer = setTimeout(() => { controller.abort() }, ms)
  timer.unref() // as AbortSignal.timeout's: a pending read does not keep the process alive
  const onAbort = (): void => { controller.abort() }
  if (outer?.aborted === true) controller.abort()
  else outer?.addEventListener('abort', onAbort, { once: true })
  try {
    return await fn(controller.signal)
  } finally {
    clearTimeout(timer)
    outer?.removeEventListener('abort', onAbort)
  }
}
