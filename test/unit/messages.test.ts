// Every validator of protocols/mesh/messages.ts against malformed input: each bad message is
// refused with a SchemaError naming the field at fault; fields a newer peer might add are ignored.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  validateBeacon, validateLeaseReply, validateLeaseRequest, validateNarHeader, validateNarRequest, validateOffer,
  validatePathInfoReply, validatePathInfoRequest, validateResultAck, validateResultReport, validateStealGrant,
  validateStealRequest
} from '../../protocols/mesh/messages.ts'
import { SchemaError } from '../../protocols/mesh/schema.ts'

const P = '/nix/store/0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-hello-2.12'
const DRV = '/nix/store/1xh2mx6wsnyhq8lygnxq3c5m6x5j8l8y-hello-2.12.drv'
const HASH = 'sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s'
const many = <T>(n: number, x: T): T[] => Array.from({ length: n }, () => x)

const info = { path: P, narHash: HASH, narSize: 120, references: [P], deriver: DRV, signatures: ['k:c2ln'] }

/** One valid message of each kind, and the validator that checks it. */
const valid = {
  beacon: {
    check: validateBeacon,
    msg: {
      v: 1, seq: 7, systems: ['x86_64-linux'], features: ['kvm'], mandatoryFeatures: [], maxJobs: 2, running: 1, queued: 3,
      speedFactor: 1.5, load: 0.3, freeDiskBytes: 1e10, diskLow: false, building: [DRV], addresses: ['/ip4/10.0.0.1/tcp/4001'],
      signingKey: 'node-1:dGVzdGtleQ=='
    }
  },
  offer: { check: validateOffer, msg: { v: 1, seq: 2, entries: [{ system: 'x86_64-linux', requiredFeatures: ['big'], count: 2 }] } },
  'steal request': { check: validateStealRequest, msg: { want: 2, systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] } },
  'steal grant': {
    check: validateStealGrant,
    msg: { leaseMs: 20_000, items: [{ drvPath: DRV, outputs: { out: P }, system: 'x86_64-linux', requiredFeatures: [], timeout: 60, maxSilentTime: 30 }] }
  },
  'lease request': { check: validateLeaseRequest, msg: { renew: [DRV], release: [DRV] } },
  'lease reply': { check: validateLeaseReply, msg: { lost: [] } },
  'result report': {
    check: validateResultReport,
    msg: { drvPath: DRV, ok: false, outputs: { out: P }, failure: { kind: 'build-failed', message: 'exit 1', logTail: ['oops'] } }
  },
  'result ack': { check: validateResultAck, msg: { accepted: true } },
  'path-info request': { check: validatePathInfoRequest, msg: { roots: [P] } },
  'path-info reply': { check: validatePathInfoReply, msg: { infos: [info], missing: [DRV] } },
  'nar request': { check: validateNarRequest, msg: { paths: [P] } },
  'nar header': { check: validateNarHeader, msg: { path: P, info, error: 'none' } }
} satisfies Record<string, { check: (v: unknown) => unknown, msg: object }>

type Kind = keyof typeof valid

/** A copy of `base` with the value at `path` (dotted, numbers index lists) replaced, or deleted when `value` is DELETE. */
const DELETE = Symbol('delete')
function change (base: object, path: string, value: unknown): unknown {
  const copy = structuredClone(base) as Record<string, unknown>
  const keys = path.split('.')
  let at: Record<string, unknown> = copy
  for (const k of keys.slice(0, -1)) at = at[k] as Record<string, unknown>
  const last = keys[keys.length - 1] ?? ''
  if (value === DELETE) Reflect.deleteProperty(at, last)
  else at[last] = value
  return copy
}

// [message kind, field changed, new value, expected message]
const cases: Array<[Kind, string, unknown, RegExp]> = [
  // beacon: wrong types, bounds, missing fields, oversized lists, bad entries
  ['beacon', 'v', 2, /^beacon\.v: 2 is outside 1\.\.1$/],
  ['beacon', 'seq', -1, /^beacon\.seq: -1 is outside 0\.\./],
  ['beacon', 'seq', '7', /^beacon\.seq: not an integer$/],
  ['beacon', 'seq', 1.5, /^beacon\.seq: not an integer$/],
  ['beacon', 'seq', DELETE, /^beacon\.seq: not an integer$/],
  ['beacon', 'systems', 'x86_64-linux', /^beacon\.systems: expected a list$/],
  ['beacon', 'systems', many(65, 'x86_64-linux'), /^beacon\.systems: more than 64 items$/],
  ['beacon', 'systems.0', 'x86 64', /^beacon\.systems\[0\]: 'x86 64' is malformed$/],
  ['beacon', 'features.0', 'x'.repeat(129), /^beacon\.features\[0\]: longer than 128 characters$/],
  ['beacon', 'mandatoryFeatures', null, /^beacon\.mandatoryFeatures: expected a list$/],
  ['beacon', 'maxJobs', 5000, /^beacon\.maxJobs: 5000 is outside 0\.\.4096$/],
  ['beacon', 'running', -1, /^beacon\.running: -1 is outside/],
  ['beacon', 'queued', Number.NaN, /^beacon\.queued: not an integer$/],
  ['beacon', 'speedFactor', 0, /^beacon\.speedFactor: 0 is outside 0\.001\.\./],
  ['beacon', 'speedFactor', Infinity, /^beacon\.speedFactor: not a finite number$/],
  ['beacon', 'load', -0.5, /^beacon\.load: -0\.5 is outside/],
  ['beacon', 'freeDiskBytes', -1, /^beacon\.freeDiskBytes: -1 is outside/],
  ['beacon', 'diskLow', 'false', /^beacon\.diskLow: expected true or false$/],
  ['beacon', 'diskLow', DELETE, /^beacon\.diskLow: expected true or false$/],
  ['beacon', 'building', many(65, DRV), /^beacon\.building: more than 64 items$/],
  ['beacon', 'building.0', '/tmp/x.drv', /^beacon\.building\[0\]: '\/tmp\/x\.drv' is malformed$/],
  ['beacon', 'building.0', '/nix/store/ec1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-x.drv', /^beacon\.building\[0\]: .* is malformed$/],
  ['beacon', 'building.0', '/nix/store/../../etc/passwd', /^beacon\.building\[0\]: .* is malformed$/],
  ['beacon', 'addresses', many(33, '/ip4/1.2.3.4/tcp/1'), /^beacon\.addresses: more than 32 items$/],
  ['beacon', 'addresses.0', 'a'.repeat(257), /^beacon\.addresses\[0\]: longer than 256 characters$/],
  ['beacon', 'signingKey', 'no colon', /^beacon\.signingKey: 'no colon' is malformed$/],
  ['beacon', 'signingKey', 42, /^beacon\.signingKey: expected a string$/],
  // offer
  ['offer', 'entries', {}, /^offer\.entries: expected a list$/],
  ['offer', 'entries', many(257, { system: 'x', requiredFeatures: [], count: 1 }), /^offer\.entries: more than 256 items$/],
  ['offer', 'entries.0.count', 0, /^offer\.entries\[0\]\.count: 0 is outside 1\.\./],
  ['offer', 'entries.0.system', DELETE, /^offer\.entries\[0\]\.system: expected a string$/],
  ['offer', 'entries.0.requiredFeatures.0', 'a/b', /^offer\.entries\[0\]\.requiredFeatures\[0\]: 'a\/b' is malformed$/],
  ['offer', 'entries.0', 'x86_64-linux', /^offer\.entries\[0\]: expected an object$/],
  // steal request
  ['steal request', 'want', 0, /^steal request\.want: 0 is outside 1\.\.64$/],
  ['steal request', 'want', 65, /^steal request\.want: 65 is outside 1\.\.64$/],
  ['steal request', 'want', DELETE, /^steal request\.want: not an integer$/],
  ['steal request', 'systems', [1], /^steal request\.systems\[0\]: expected a string$/],
  ['steal request', 'features', DELETE, /^steal request\.features: expected a list$/],
  // steal grant
  ['steal grant', 'leaseMs', 999, /^steal grant\.leaseMs: 999 is outside 1000\.\.3600000$/],
  ['steal grant', 'items', many(65, {}), /^steal grant\.items: more than 64 items$/],
  ['steal grant', 'items.0.drvPath', P.replace('/nix/store/', '/gnu/store/'), /^steal grant\.items\[0\]\.drvPath: .* is malformed$/],
  ['steal grant', 'items.0.outputs', [P], /^steal grant\.items\[0\]\.outputs: expected an object$/],
  ['steal grant', 'items.0.outputs', Object.fromEntries(many(65, 0).map((_, i) => [`o${i}`, P])), /^steal grant\.items\[0\]\.outputs: more than 64 keys$/],
  ['steal grant', 'items.0.outputs', { 'bad name': P }, /^steal grant\.items\[0\]\.outputs key: 'bad name' is malformed$/],
  ['steal grant', 'items.0.outputs.out', 'relative/path', /^steal grant\.items\[0\]\.outputs\.out: 'relative\/path' is malformed$/],
  ['steal grant', 'items.0.timeout', 0, /^steal grant\.items\[0\]\.timeout: 0 is outside 1\.\./],
  ['steal grant', 'items.0.maxSilentTime', -5, /^steal grant\.items\[0\]\.maxSilentTime: -5 is outside 1\.\./],
  // lease
  ['lease request', 'renew', DELETE, /^lease request\.renew: expected a list$/],
  ['lease request', 'renew', many(10_001, DRV), /^lease request\.renew: more than 10000 items$/],
  ['lease request', 'release', 'all', /^lease request\.release: expected a list$/],
  ['lease request', 'release.0', '', /^lease request\.release\[0\]: '' is malformed$/],
  ['lease reply', 'lost', [P + '\n'], /^lease reply\.lost\[0\]: .* is malformed$/s],
  // result
  ['result report', 'ok', 1, /^result report\.ok: expected true or false$/],
  ['result report', 'drvPath', DELETE, /^result report\.drvPath: expected a string$/],
  ['result report', 'drvPath', '/nix/store/' + '0'.repeat(32) + '-' + 'x'.repeat(220), /^result report\.drvPath: longer than 260 characters$/],
  ['result report', 'drvPath', '/nix/store/' + '0'.repeat(32) + '-' + 'x'.repeat(212), /^result report\.drvPath: .* is malformed$/],
  ['result report', 'failure.kind', 'exploded', /^result report\.failure\.kind: expected one of build-failed, timed-out, hash-mismatch, not-deterministic, transient$/],
  ['result report', 'failure.message', 'x'.repeat(4097), /^result report\.failure\.message: longer than 4096 characters$/],
  ['result report', 'failure.logTail', many(201, 'line'), /^result report\.failure\.logTail: more than 200 items$/],
  ['result report', 'failure', 'it broke', /^result report\.failure: expected an object$/],
  ['result report', 'buildMs', -1, /^result report\.buildMs: -1 is outside 0\.\.2592000000$/],
  ['result report', 'buildMs', 1.5, /^result report\.buildMs: not an integer$/],
  ['result report', 'buildMs', '1000', /^result report\.buildMs: not an integer$/],
  ['result report', 'buildMs', 30 * 24 * 3600 * 1000 + 1, /^result report\.buildMs: 2592000001 is outside 0\.\.2592000000$/],
  ['result ack', 'accepted', DELETE, /^result ack\.accepted: expected true or false$/],
  // store paths
  ['path-info request', 'roots', [P, 'garbage'], /^path-info request\.roots\[1\]: 'garbage' is malformed$/],
  ['path-info request', 'roots', many(10_001, P), /^path-info request\.roots: more than 10000 items$/],
  ['path-info reply', 'infos.0.narHash', 'md5:abc', /^path-info reply\.infos\[0\]\.narHash: 'md5:abc' is malformed$/],
  ['path-info reply', 'infos.0.narSize', 0, /^path-info reply\.infos\[0\]\.narSize: 0 is outside 1\.\./],
  ['path-info reply', 'infos.0.narSize', -120, /^path-info reply\.infos\[0\]\.narSize: -120 is outside 1\.\./],
  ['path-info reply', 'infos.0.narSize', 2 ** 60, /^path-info reply\.infos\[0\]\.narSize: \d+ is outside 1\.\.9007199254740991$/],
  ['path-info reply', 'infos.0.references.0', 7, /^path-info reply\.infos\[0\]\.references\[0\]: expected a string$/],
  ['path-info reply', 'infos.0.deriver', 'not-a-path', /^path-info reply\.infos\[0\]\.deriver: 'not-a-path' is malformed$/],
  ['path-info reply', 'infos.0.signatures', many(17, 'k:c2ln'), /^path-info reply\.infos\[0\]\.signatures: more than 16 items$/],
  ['path-info reply', 'missing', DELETE, /^path-info reply\.missing: expected a list$/],
  ['nar request', 'paths', P, /^nar request\.paths: expected a list$/],
  ['nar request', 'paths.0', P + '/bin/sh', /^nar request\.paths\[0\]: .* is malformed$/],
  ['nar header', 'path', DELETE, /^nar header\.path: expected a string$/],
  ['nar header', 'info.narHash', 'sha256:ABC', /^nar header\.info\.narHash: 'sha256:ABC' is malformed$/],
  ['nar header', 'error', 'e'.repeat(1025), /^nar header\.error: longer than 1024 characters$/]
]

describe('mesh message validators', () => {
  for (const [kind, { check, msg }] of Object.entries(valid)) {
    it(`accept a valid ${kind}, ignoring unknown fields`, () => {
      const withExtra = { ...msg, fromTheFuture: { anything: [1, 2] }, v2: 'x' }
      const out = check(withExtra) as Record<string, unknown>
      assert.deepEqual(out, msg)
      assert.equal('fromTheFuture' in out, false, 'unknown fields are dropped, not passed on')
    })
  }

  for (const [kind, field, value, expected] of cases) {
    const shown = value === DELETE ? 'missing' : JSON.stringify(value)?.slice(0, 40) ?? String(value)
    it(`refuse a ${kind} with ${field} ${shown}`, () => {
      const { check, msg } = valid[kind]
      assert.throws(() => check(change(msg, field, value)), (err: unknown) => {
        assert.ok(err instanceof SchemaError, `expected SchemaError, got ${String(err)}`)
        assert.equal(err.name, 'SchemaError')
        assert.match(err.message, expected)
        return true
      })
    })
  }

  it('refuse things that are not objects at all, naming the message', () => {
    for (const [kind, { check }] of Object.entries(valid)) {
      for (const v of [null, undefined, 42, 'text', [], [{}], true]) {
        assert.throws(() => check(v), new SchemaError(`${kind}: expected an object`))
      }
    }
  })

  it('treat null optional fields as absent', () => {
    const out = validateLeaseRequest({ renew: [], release: null })
    assert.deepEqual(out, { renew: [] })
  })

  it("pass a successful report's build time on, and accept one without (an older peer)", () => {
    const ok = { drvPath: DRV, ok: true, outputs: { out: P } }
    assert.equal(validateResultReport({ ...ok, buildMs: 1234 }).buildMs, 1234)
    assert.equal(validateResultReport({ ...ok, buildMs: 0 }).buildMs, 0)
    assert.deepEqual(validateResultReport(ok), ok)
  })

  it('keep an output named __proto__ as an output, never as a prototype', () => {
    const report = validateResultReport(JSON.parse(`{"drvPath":"${DRV}","ok":true,"outputs":{"__proto__":"${P}","out":"${P}"}}`))
    assert.deepEqual(Object.keys(report.outputs ?? {}).sort(), ['__proto__', 'out'])
    assert.equal(Object.getPrototypeOf(report.outputs), Object.prototype)
  })
})
