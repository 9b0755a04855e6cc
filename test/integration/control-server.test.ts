// The control socket: a real control server on a real Unix socket, in front of a stub node that
// records what reaches it. Every malformed request is answered with BadRequest naming its field,
// nothing malformed reaches the node, and the server keeps answering afterwards.
import assert from 'node:assert/strict'
import { connect } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { Server } from 'node:net'
import { startControlServer } from '../../node/control/control-server.ts'
import type { ControlledNode } from '../../node/control/controlled-node.ts'
import { MAX_BUILD_SECONDS, MAX_SUBMIT_DRVS } from '../../node/control/control-protocol.ts'
import type { StatusReport, SubmissionReport } from '../../node/mesh/reports.ts'
import { createLogger } from '../../node/log.ts'
import { within } from '../helpers/wait.ts'
import { tempDir } from '../helpers/nix.ts'

const DRV = '/nix/store/0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-a.drv'
const OUT = '/nix/store/0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-a'
const REPLY_TIMEOUT_MS = 10_000

const report: SubmissionReport = { id: '20261202T170000-abcdef12', state: 'built', submittedAt: new Date(0).toISOString(), counts: {}, results: [] }
const submitted: Array<{ drvPaths: string[], options: unknown }> = []
const stub: ControlledNode = {
  submit: async (drvPaths, options) => { submitted.push({ drvPaths, options }); return report.id },
  status: () => ({ self: { membership: 'closed' }, peers: [] }) as unknown as StatusReport,
  submissionReport: (id) => id === report.id ? report : undefined,
  watch: () => () => {}
}

let dir: string
let cleanup: () => Promise<void>
let server: Server
let socket: string

before(async () => {
  ({ dir, cleanup } = await tempDir('meshbuild-control-'))
  socket = join(dir, 'control.sock')
  server = await startControlServer(stub, socket, createLogger('control-test', 'error'))
})
after(async () => {
  server.close()
  await cleanup()
})

/** Sends raw bytes, returns the replies the server sent before closing. */
async function raw (bytes: string): Promise<Array<{ ok: boolean, error?: string, errorName?: string, id?: string }>> {
  return await within(new Promise((resolve, reject) => {
    const c = connect(socket)
    let text = ''
    c.on('data', (d: Buffer) => { text += d.toString('utf8') })
    c.on('error', reject)
    c.on('close', () => { resolve(text.split('\n').filter(l => l !== '').map(l => JSON.parse(l) as { ok: boolean })) })
    c.write(bytes)
  }), REPLY_TIMEOUT_MS, 'the control server to answer and close')
}

const submit = (fields: Record<string, unknown>): string => JSON.stringify({ op: 'submit', drvPaths: [DRV], priority: 5, ...fields }) + '\n'

const bad: Array<{ name: string, line: string, field: RegExp }> = [
  { name: 'not JSON', line: '{op: submit\n', field: /^request: not JSON/ },
  { name: 'binary garbage', line: '\u0000\u00ff\u001b[2J\n', field: /^request: not JSON/ },
  { name: 'JSON null', line: 'null\n', field: /^request: expected an object/ },
  { name: 'a list', line: '[1,2]\n', field: /^request: expected an object/ },
  { name: 'no op', line: '{}\n', field: /^request\.op: expected one of submit, status, submission, watch/ },
  { name: 'an unknown op', line: '{"op":"rm -rf"}\n', field: /^request\.op: / },
  { name: 'op of the wrong type', line: '{"op":7}\n', field: /^request\.op: / },
  { name: 'a negative priority', line: submit({ priority: -7 }), field: /^request\.priority: -7 is outside 0\.\.9/ },
  { name: 'priority 10', line: submit({ priority: 10 }), field: /^request\.priority: 10 is outside 0\.\.9/ },
  { name: 'a fractional priority', line: submit({ priority: 2.5 }), field: /^request\.priority: not an integer/ },
  { name: 'priority as a string', line: submit({ priority: '1' }), field: /^request\.priority: not an integer/ },
  { name: 'no priority', line: JSON.stringify({ op: 'submit', drvPaths: [DRV] }) + '\n', field: /^request\.priority: not an integer/ },
  { name: 'a negative timeout', line: submit({ timeout: -5 }), field: /^request\.timeout: -5 is outside 1\.\./ },
  { name: 'a zero timeout', line: submit({ timeout: 0 }), field: /^request\.timeout: 0 is outside/ },
  { name: 'a timeout of years', line: submit({ timeout: MAX_BUILD_SECONDS + 1 }), field: /^request\.timeout: .* is outside 1\.\.604800/ },
  { name: 'an infinite-ish timeout', line: submit({ timeout: 1e308 }), field: /^request\.timeout: / },
  { name: 'a negative maxSilentTime', line: submit({ maxSilentTime: -1 }), field: /^request\.maxSilentTime: -1 is outside/ },
  { name: 'maxSilentTime as a string', line: submit({ maxSilentTime: '60' }), field: /^request\.maxSilentTime: not an integer/ },
  { name: 'checkReproducible not a boolean', line: submit({ checkReproducible: 'yes' }), field: /^request\.checkReproducible: expected true or false/ },
  { name: 'drvPaths not a list', line: submit({ drvPaths: DRV }), field: /^request\.drvPaths: expected a list/ },
  { name: 'an empty drvPaths', line: submit({ drvPaths: [] }), field: /^request\.drvPaths: names no derivation/ },
  { name: 'a drvPath that is no store path', line: submit({ drvPaths: [DRV, '/etc/passwd'] }), field: /^request\.drvPaths\[1\]: not a store path/ },
  { name: 'a drvPath with ..', line: submit({ drvPaths: ['/nix/store/../etc/x.drv'] }), field: /^request\.drvPaths\[0\]: not a store path/ },
  { name: 'an output path, not a .drv', line: submit({ drvPaths: [OUT] }), field: /^request\.drvPaths\[0\]: not a derivation/ },
  { name: 'a drvPath of the wrong type', line: submit({ drvPaths: [42] }), field: /^request\.drvPaths\[0\]: expected a string/ },
  { name: 'a huge drvPath', line: submit({ drvPaths: ['/nix/store/' + 'a'.repeat(10_000) + '.drv'] }), field: /^request\.drvPaths\[0\]: longer than/ },
  { name: 'too many drvPaths', line: submit({ drvPaths: Array.from({ length: MAX_SUBMIT_DRVS + 1 }, () => DRV) }), field: new RegExp(`^request\\.drvPaths: more than ${MAX_SUBMIT_DRVS} items`) },
  { name: 'a submission id of the wrong type', line: '{"op":"submission","id":{"x":1}}\n', field: /^request\.id: expected a string/ },
  { name: 'a submission id with a slash', line: '{"op":"submission","id":"../../etc"}\n', field: /^request\.id: .* is malformed/ },
  { name: 'a watch without id', line: '{"op":"watch"}\n', field: /^request\.id: expected a string/ },
  { name: 'a watch id too long', line: JSON.stringify({ op: 'watch', id: 'a'.repeat(65) }) + '\n', field: /^request\.id: longer than 64/ }
]

describe('control server', () => {
  for (const c of bad) {
    it(`answers BadRequest naming the field: ${c.name}`, async () => {
      const before = submitted.length
      const replies = await raw(c.line)
      assert.equal(replies.length, 1, `one reply, got ${JSON.stringify(replies).slice(0, 200)}`)
      const [r] = replies
      assert.equal(r?.ok, false)
      assert.equal(r?.errorName, 'BadRequest')
      assert.match(r?.error ?? '', c.field)
      assert.equal(submitted.length, before, 'a bad request reached the node')
    })
  }

  it('still serves good requests, with the fields the node gets', async () => {
    const [r] = await raw(submit({ priority: 0, timeout: 60, maxSilentTime: 30, checkReproducible: true, extra: 'ignored' }))
    assert.deepEqual(r, { ok: true, id: report.id })
    assert.deepEqual(submitted.at(-1), { drvPaths: [DRV], options: { priority: 0, timeout: 60, maxSilentTime: 30, checkReproducible: true } })
    const [s] = await raw('{"op":"status"}\n')
    assert.equal(s?.ok, true)
    const [sub] = await raw(JSON.stringify({ op: 'submission', id: report.id }) + '\n')
    assert.equal(sub?.ok, true)
    const [unknown] = await raw('{"op":"submission","id":"20990101T000000-00000000"}\n')
    assert.equal(unknown?.errorName, 'UnknownSubmission')
  })
})
