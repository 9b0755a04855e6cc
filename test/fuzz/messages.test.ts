// Fuzzing what peers send: every validator of protocols/mesh/messages.ts (gossip and stream
// messages) on mutated valid samples, as bytes (JSON text mutated) and as values (members
// replaced, removed, repeated), and StreamChannel's framing on mutated frames. A validator may
// only throw SchemaError, and what it accepts must survive another round trip unchanged; a
// channel may only end a read with its named errors, and never hang.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import type { Stream } from '@libp2p/interface'
import * as messages from '../../protocols/mesh/messages.ts'
import { StreamChannel } from '../../protocols/mesh/stream-channel.ts'
import { MemoryStream } from '../helpers/memory-stream.ts'
import { fuzz, fuzzInput, mutateValue, randomValue, SEED, type Rng } from './fuzz.ts'

const P = (c: string, name = 'pkg'): string => `/nix/store/${c.repeat(32)}-${name}`
const info = { path: P('a'), narHash: 'sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca', narSize: 160, references: [P('b')], deriver: P('c', 'pkg.drv'), signatures: ['k-1:bjMt5ImeWJiyHn2S+7yhTrHbMrfOO1n1ZaTCYqVt+rMKJyxMD6S2Yt6NzIgwW5r5CHmrn9KR4YXHoFVzK4UZBA=='] }

/** A valid message for each validator (by export name); a validator not listed is fed random values only. */
const SAMPLES: Record<string, unknown> = {
  validateBeacon: {
    v: 1, seq: 7, systems: ['x86_64-linux'], features: ['kvm'], mandatoryFeatures: [], maxJobs: 4, running: 1, queued: 3,
    speedFactor: 1.5, load: 0.4, freeDiskBytes: 1e10, diskLow: false, building: [P('d', 'x.drv')], addresses: ['/ip4/10.0.0.1/tcp/4001'],
    signingKey: 'node-1:bjMt5ImeWJiyHn2S+7yhTrHbMrfOO1n1ZaTCYqVt+rM=',
    signer: { cacheKey: 'cache-1:bjMt5ImeWJiyHn2S+7yhTrHbMrfOO1n1ZaTCYqVt+rM=', cacheUrls: ['http://10.0.0.1:8080'], paths: 3, narBytes: 1000, hits: 1, misses: 2 }
  },
  validateOffer: { v: 1, seq: 3, entries: [{ system: 'x86_64-linux', requiredFeatures: [], count: 2 }] },
  validateStealRequest: { want: 2, systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] },
  validateStealGrant: { leaseMs: 30_000, items: [{ drvPath: P('d', 'x.drv'), outputs: { out: P('h', 'x') }, system: 'x86_64-linux', requiredFeatures: [], timeout: 60 }] },
  validateLeaseRequest: { renew: [P('d', 'x.drv')], release: [P('f', 'y.drv')] },
  validateLeaseReply: { lost: [P('d', 'x.drv')] },
  validateResultReport: { drvPath: P('d', 'x.drv'), ok: false, failure: { kind: 'build-failed', message: 'exit 1', logTail: ['a', 'b'] } },
  validateResultAck: { accepted: true },
  validatePathInfoRequest: { roots: [P('a')], withInputs: true },
  validatePathInfoReply: { infos: [info, { ...info, path: P('b'), references: [] }], missing: [P('g')], inputs: [P('b')] },
  validateNarRequest: { paths: [P('a'), P('b')] },
  validateNarHeader: { path: P('a'), info },
  validateSignOffer: { paths: [info] },
  validateSignReply: { stored: [P('a')], rejected: [{ path: P('b'), reason: 'untrusted', permanent: true }] }
}

type Validate = (v: unknown) => unknown
const validators = Object.entries(messages as Record<string, unknown>).filter((e): e is [string, Validate] => e[0].startsWith('validate') && typeof e[1] === 'function')

describe(`fuzzing the mesh messages (seed ${SEED})`, { timeout: 120_000 }, () => {
  it('has a valid sample for every validator, and each accepts its sample', () => {
    assert.ok(validators.length >= 14)
    for (const [name, validate] of validators) {
      const sample = SAMPLES[name]
      if (sample === undefined) continue // a message added since: fed random values below
      assert.doesNotThrow(() => validate(sample), name)
    }
  })

  for (const [name, validate] of validators) {
    it(`${name}: mutated JSON text and mutated values end in SchemaError or a message that round-trips`, async () => {
      const sample = SAMPLES[name]
      const texts = sample !== undefined ? [Buffer.from(JSON.stringify(sample))] : [Buffer.from('{}')]
      const accepted = (v: unknown): void => {
        const out = validate(v)
        // What is accepted is plain data: it serialises and validates again to the same.
        const text = JSON.stringify(out)
        assert.equal(JSON.stringify(validate(JSON.parse(text))), text)
      }
      await fuzz({
        name: `${name}-text`,
        iterations: 6000,
        input: (rng) => fuzzInput(rng, texts),
        run: (bytes) => {
          let value: unknown
          try { value = JSON.parse(bytes.toString('utf8')) } catch { return } // dropped before any validator
          accepted(value)
        },
        allowed: ['SchemaError']
      })
      const r = await fuzz({
        name: `${name}-value`,
        iterations: 6000,
        input: (rng: Rng) => {
          if (sample === undefined || rng.int(10) === 0) return randomValue(rng)
          let v: unknown = sample
          for (let i = 1 + rng.int(3); i > 0; i--) v = mutateValue(rng, v)
          return v
        },
        run: accepted,
        allowed: ['SchemaError']
      })
      assert.ok((r.errors.SchemaError ?? 0) > 0, `${name} refused no mutated value`)
    })
  }
})

function frame (body: Buffer): Buffer {
  const head = Buffer.alloc(4)
  head.writeUInt32BE(body.length)
  return Buffer.concat([head, body])
}

describe(`fuzzing StreamChannel framing (seed ${SEED})`, { timeout: 120_000 }, () => {
  it('reads mutated frame sequences to a message or a named error, never hanging', async () => {
    const samples = Object.values(SAMPLES).map(s => frame(Buffer.from(JSON.stringify(s))))
    samples.push(Buffer.concat([samples[0] ?? Buffer.alloc(0), samples[1] ?? Buffer.alloc(0)]))
    const validate = messages.validateNarHeader
    let readOk = 0
    const r = await fuzz({
      name: 'stream-channel',
      iterations: 12000,
      input: (rng) => {
        const bytes = fuzzInput(rng, samples)
        const cuts: Buffer[] = []
        for (let at = 0; at < bytes.length;) { const n = 1 + rng.int(64); cuts.push(bytes.subarray(at, at + n)); at += n }
        return cuts
      },
      run: async (parts) => {
        const stream = new MemoryStream()
        const ch = new StreamChannel(stream as unknown as Stream, { highWater: 256 })
        // Delivered while the channel reads, then the remote end: every read must finish.
        const feeding = (async () => {
          for (const p of parts) { stream.deliver(p); await Promise.resolve() }
          stream.endRemote()
        })()
        try {
          for (let i = 0; i < 4; i++) {
            await ch.readMessage(validate, { maxBytes: 64 * 1024, timeoutMs: 1_000 })
            readOk++
          }
        } finally {
          await feeding
        }
      },
      allowed: ['SchemaError', 'MessageTooLargeError', 'MalformedMessageError', 'StreamEndedError', 'ProtocolError'],
      show: (parts) => `base64 ${Buffer.concat(parts).subarray(0, 2048).toString('base64')}`
    })
    assert.ok(readOk > 0, 'no mutated frame was ever read')
    assert.equal(r.errors.TimeoutError, undefined)
  })

  it('reads raw runs of mutated lengths to their end or StreamEndedError', async () => {
    await fuzz({
      name: 'stream-channel-raw',
      iterations: 4000,
      input: (rng) => ({ announced: rng.pick([0, 1, 7, 100, 4096, 65_536]), sent: rng.int(70_000), chunk: 1 + rng.int(8192) }),
      run: async ({ announced, sent, chunk }) => {
        const stream = new MemoryStream()
        const ch = new StreamChannel(stream as unknown as Stream, { highWater: 1024 })
        const data = Buffer.alloc(sent, 7)
        const feeding = (async () => {
          for (let at = 0; at < data.length; at += chunk) { stream.deliver(data.subarray(at, at + chunk)); await Promise.resolve() }
          stream.endRemote()
        })()
        let got = 0
        try {
          for await (const part of ch.readRaw(announced, { idleTimeoutMs: 1_000 })) got += part.byteLength
          assert.equal(got, announced)
        } finally {
          await feeding
        }
      },
      allowed: ['StreamEndedError']
    })
  })
})
