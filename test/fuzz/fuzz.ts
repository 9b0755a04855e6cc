// A small fuzzing harness for the decoders: a seeded PRNG, mutators of real valid samples (bit
// flips, truncation, splicing, inserted and repeated runs, huge length fields), and a loop that
// asserts each case ends with a value or one of the decoder's named errors, within a time bound,
// and that the heap does not grow without bound.
//
// Iterations: MESHBUILD_FUZZ_ITERATIONS (a multiplier of 1 is the CI default; `npm run fuzz`
// sets more). MESHBUILD_FUZZ_SEED replays a run: a failure message names the seed and the case.
import assert from 'node:assert/strict'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/** A case slower than this counts as a hang. */
export const CASE_TIMEOUT_MS = 2_000
/** Heap growth allowed over a whole run of one target, after garbage collection. */
export const MAX_HEAP_GROWTH_BYTES = 64 * 1024 * 1024

export const ITERATION_SCALE = Math.max(0, Number(process.env.MESHBUILD_FUZZ_ITERATIONS ?? '1') || 1)
export const SEED = process.env.MESHBUILD_FUZZ_SEED !== undefined
  ? Number(process.env.MESHBUILD_FUZZ_SEED) >>> 0
  : (Math.random() * 2 ** 32) >>> 0

/** mulberry32: small, fast, and good enough to pick mutations. */
export class Rng {
  private state: number
  constructor (seed: number) { this.state = seed >>> 0 }
  next (): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  int (n: number): number { return Math.floor(this.next() * n) }
  pick<T> (xs: readonly T[]): T {
    const x = xs[this.int(xs.length)]
    if (x === undefined) throw new Error('pick from an empty list')
    return x
  }

  bytes (n: number): Buffer {
    const b = Buffer.alloc(n)
    for (let i = 0; i < n; i++) b[i] = this.int(256)
    return b
  }
}

/** Lengths a decoder must not trust: around the 32- and 64-bit edges. */
const HUGE = [0xffffffffn, 0x80000000n, 0x7fffffffn, 0x100000000n, 0xffffffffffffffffn, 0x7fffffffffffffffn, 2n ** 53n, 2n ** 53n + 1n, 1n << 40n]

/** One random mutation of `input` (never longer than input plus a few KiB). */
export function mutate (rng: Rng, input: Buffer, others: readonly Buffer[]): Buffer {
  const b = Buffer.from(input)
  switch (rng.int(9)) {
    case 0: { // flip bits
      const n = 1 + rng.int(8)
      for (let i = 0; i < n && b.length > 0; i++) { const at = rng.int(b.length); b[at] = (b[at] ?? 0) ^ (1 << rng.int(8)) }
      return b
    }
    case 1: return b.subarray(0, rng.int(b.length + 1)) // truncate
    case 2: { // splice with another sample
      const o = rng.pick(others)
      return Buffer.concat([b.subarray(0, rng.int(b.length + 1)), o.subarray(rng.int(o.length + 1))])
    }
    case 3: { // insert random bytes
      const at = rng.int(b.length + 1)
      return Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.int(64)), b.subarray(at)])
    }
    case 4: { // repeat a run
      const at = rng.int(b.length + 1)
      const run = b.subarray(at, at + 1 + rng.int(256))
      return Buffer.concat([b.subarray(0, at), run, run, b.subarray(at)])
    }
    case 5: { // a huge u64 little-endian length, aligned as NAR and daemon lengths are
      if (b.length < 8) return b
      const at = rng.int(Math.floor(b.length / 8)) * 8
      b.writeBigUInt64LE(rng.pick(HUGE), at)
      return b
    }
    case 6: { // a huge u32 big-endian length anywhere (stream frames)
      if (b.length < 4) return b
      b.writeUInt32BE(Number(rng.pick(HUGE) & 0xffffffffn), rng.int(b.length - 3))
      return b
    }
    case 7: { // delete a run
      const at = rng.int(b.length + 1)
      return Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + rng.int(64))])
    }
    default: { // overwrite with interesting bytes
      const at = rng.int(b.length + 1)
      const junk = rng.pick([Buffer.from([0]), Buffer.from([0xff]), Buffer.from('\n'), Buffer.from('"'), Buffer.from('('), Buffer.from(')'), Buffer.from('\\'), Buffer.from([0xc3, 0x28])])
      return Buffer.concat([b.subarray(0, at), junk, b.subarray(at + junk.length)])
    }
  }
}

/** Stacked mutations, or (sometimes) plain random bytes. */
export function fuzzInput (rng: Rng, samples: readonly Buffer[]): Buffer {
  if (rng.int(20) === 0) return rng.bytes(rng.int(512))
  let b = rng.pick(samples)
  const rounds = 1 + rng.int(4)
  for (let i = 0; i < rounds; i++) b = mutate(rng, b, samples)
  return b
}

export interface FuzzTarget<I> {
  name: string
  /** Cases in CI; multiplied by MESHBUILD_FUZZ_ITERATIONS. */
  iterations: number
  /** Makes one input from the PRNG. */
  input: (rng: Rng) => I
  /** Decodes it; may throw only errors whose `name` is in `allowed`. */
  run: (input: I) => unknown
  allowed: readonly string[]
  /** For the failure message. */
  show?: (input: I) => string
}

const gc: () => void = (() => {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
})()

/** Runs a target's cases; fails naming the seed, the case and its input. Returns counts for the log. */
export async function fuzz<I> (t: FuzzTarget<I>): Promise<{ cases: number, ok: number, errors: Record<string, number> }> {
  const rng = new Rng(SEED ^ hashName(t.name))
  const iterations = Math.max(1, Math.round(t.iterations * ITERATION_SCALE))
  const errors: Record<string, number> = {}
  let ok = 0
  gc()
  const heapBefore = process.memoryUsage().heapUsed
  for (let i = 0; i < iterations; i++) {
    const input = t.input(rng)
    const where = (): string => `${t.name}: case ${i} of seed ${SEED} (replay: MESHBUILD_FUZZ_SEED=${SEED}); input ${(t.show ?? showInput)(input)}`
    const started = performance.now()
    let timer: NodeJS.Timeout | undefined
    try {
      const result = t.run(input)
      if (result instanceof Promise) {
        await Promise.race([result, new Promise((_resolve, reject) => {
          timer = setTimeout(() => { reject(Object.assign(new Error('case hung'), { name: 'FuzzHang' })) }, CASE_TIMEOUT_MS)
        })])
      }
      ok++
    } catch (err) {
      const e = err as Error
      if (e.name === 'FuzzHang') assert.fail(`${where()}: no answer within ${CASE_TIMEOUT_MS} ms`)
      if (!t.allowed.includes(e.name)) assert.fail(`${where()}: threw ${e.name}: ${e.message}\n${e.stack ?? ''}`)
      errors[e.name] = (errors[e.name] ?? 0) + 1
    } finally {
      clearTimeout(timer)
    }
    const ms = performance.now() - started
    if (ms > CASE_TIMEOUT_MS) assert.fail(`${where()}: took ${ms.toFixed(0)} ms`)
  }
  gc()
  const growth = process.memoryUsage().heapUsed - heapBefore
  assert.ok(growth < MAX_HEAP_GROWTH_BYTES, `${t.name}: heap grew by ${(growth / 1048576).toFixed(1)} MiB over ${iterations} cases (seed ${SEED})`)
  return { cases: iterations, ok, errors }
}

function showInput (input: unknown): string {
  if (Buffer.isBuffer(input)) return `${input.length} bytes, base64 ${input.subarray(0, 2048).toString('base64')}${input.length > 2048 ? '…' : ''}`
  try {
    const s = JSON.stringify(input)
    return s.length > 2048 ? `${s.slice(0, 2048)}…` : s
  } catch {
    return String(input)
  }
}

function hashName (s: string): number {
  let h = 2166136261
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619)
  return h >>> 0
}

/** Random JSON-ish values for structural mutation of messages. */
export function randomValue (rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 3 ? 6 : 9)) {
    case 0: return null
    case 1: return rng.int(2) === 0
    case 2: return rng.pick([0, -1, 1, 1.5, -0, 2 ** 53, -(2 ** 53), 1e308, -1e308, 4096, 4097, 65, 1e6, Number.MAX_SAFE_INTEGER])
    case 3: return rng.pick(['', 'x', '/nix/store/', '/etc/passwd', '__proto__', 'constructor', 'x'.repeat(300), '\u0000', '\ud800', 'sha256:', 'x86_64-linux'])
    case 4: return `/nix/store/${'0123456789abcdfghijklmnpqrsvwxyz'[rng.int(32)]?.repeat(32) ?? ''}-${'a'.repeat(1 + rng.int(220))}`
    case 5: return rng.int(1_000_000) - 500_000
    case 6: return Array.from({ length: rng.pick([0, 1, 2, 65]) }, () => randomValue(rng, depth + 2))
    case 7: {
      const o: Record<string, unknown> = {}
      for (let i = rng.int(4); i > 0; i--) Object.defineProperty(o, rng.pick(['__proto__', 'a', 'v', 'paths', 'toString']), { value: randomValue(rng, depth + 1), enumerable: true, writable: true, configurable: true })
      return o
    }
    default: return Array.from({ length: rng.int(3) }, () => randomValue(rng, depth + 1))
  }
}

/** A copy of `value` with one randomly chosen member replaced, removed or added. */
export function mutateValue (rng: Rng, value: unknown): unknown {
  const copy = JSON.parse(JSON.stringify(value)) as unknown
  const slots: Array<{ parent: Record<string, unknown> | unknown[], key: string | number }> = []
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach((x, i) => { slots.push({ parent: v, key: i }); walk(x) })
    else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) { slots.push({ parent: v as Record<string, unknown>, key: k }); walk(x) }
  }
  walk(copy)
  if (slots.length === 0) return randomValue(rng)
  const { parent, key } = rng.pick(slots)
  const action = rng.int(4)
  if (Array.isArray(parent)) {
    const i = key as number
    if (action === 0) parent.splice(i, 1)
    else if (action === 1 && parent.length < 1000) parent.push(...Array.from({ length: rng.pick([1, 64, 300]) }, () => parent[i]))
    else parent[i] = randomValue(rng)
  } else {
    const k = key as string
    if (action === 0) Reflect.deleteProperty(parent, k)
    else parent[k] = randomValue(rng)
  }
  return copy
}
