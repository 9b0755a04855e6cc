// DaemonConnection against the real `nix-daemon --stdio`, compared with CliStore's answers.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { CliStore } from '../../node/nix/cli-store.ts'
import { DaemonConnection } from '../../node/nix/daemon-connection.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'
import { within } from '../helpers/wait.ts'

const TEST_TIMEOUT = 60_000
const REQUEST_TIMEOUT_MS = 10_000
const tag = randomBytes(6).toString('hex')
const store = new CliStore()
const MISSING = '/nix/store/00000000000000000000000000000000-missing'
let conn: DaemonConnection
let cleanup: () => Promise<void>
const built: string[] = []

before(async () => {
  const t = await tempDir()
  cleanup = t.cleanup
  const expr = `let a = ${shDrv(`a-${tag}`, `echo a-${tag} > $out`)}; in { inherit a; b = ${shDrv(`b-${tag}`, 'echo ${a} > $out')}; }`
  const [a, b] = await instantiate(expr, t.dir, ['a', 'b'])
  for (const drv of [a, b]) built.push((await store.realise(drv ?? '')).outputs.out ?? '')
  conn = await DaemonConnection.open()
})

after(async () => { conn?.close(); await cleanup?.() })

test('isValid and queryPathInfo agree with CliStore', { timeout: TEST_TIMEOUT }, async () => {
  const valid = await within(conn.isValid([...built, MISSING]), REQUEST_TIMEOUT_MS, 'isValid')
  assert.deepEqual([...valid].sort(), [...built].sort())
  for (const p of built) {
    const ours = await within(conn.queryPathInfo(p), REQUEST_TIMEOUT_MS, 'queryPathInfo')
    const cli = await store.queryPathInfo(p)
    assert.ok(ours != null && cli != null)
    assert.ok(ours.narHash.equals(cli.narHash), `narHash of ${p}`)
    assert.equal(ours.narSize, cli.narSize)
    assert.deepEqual(ours.references, cli.references)
    assert.equal(ours.deriver, cli.deriver)
    assert.deepEqual(ours.signatures, cli.signatures)
  }
  assert.ok((await conn.queryPathInfo(built[1] ?? ''))?.references.includes(built[0] ?? ''))
  assert.equal(await conn.queryPathInfo(MISSING), null)
})

test('a malformed path is refused before sending and the connection keeps working', { timeout: TEST_TIMEOUT }, async () => {
  await assert.rejects(conn.isValid(['/not/a/store/path']), { name: 'InvalidStorePath' })
  await assert.rejects(conn.queryPathInfo('/nix/store/short-x'), { name: 'InvalidStorePath' })
  assert.equal((await within(conn.isValid([built[0] ?? '']), REQUEST_TIMEOUT_MS, 'isValid after refusal')).size, 1)
})

test('a killed daemon makes the next request fail clearly', { timeout: TEST_TIMEOUT }, async () => {
  const victim = await DaemonConnection.open()
  victim.close()
  await assert.rejects(within(victim.isValid([built[0] ?? '']), REQUEST_TIMEOUT_MS, 'request to a dead daemon'),
    { name: 'DaemonConnectionLost', message: /nix-daemon --stdio .*closed while reading/ })
})
