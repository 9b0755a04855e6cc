// The parts of a libp2p stream that StreamChannel uses, in memory: the test delivers what the
// channel reads, ends it, and sees what the channel aborted with. It ignores pause(), as a muxer
// does for what its window already allows.
export class MemoryStream extends EventTarget {
  maxReadBufferLength = 4 * 1024 * 1024
  readStatus: 'readable' | 'paused' = 'readable'
  inactivityTimeout = 120_000
  aborted: Error | undefined
  deliver (data: Uint8Array): void { this.dispatchEvent(Object.assign(new Event('message'), { data })) }
  endRemote (): void { this.dispatchEvent(new Event('remoteCloseWrite')) }
  send (): boolean { return true }
  pause (): void { this.readStatus = 'paused' }
  resume (): void { this.readStatus = 'readable' }
  async close (): Promise<void> {}
  abort (err: Error): void { this.aborted = err; this.dispatchEvent(Object.assign(new Event('close'), { error: err })) }
}
