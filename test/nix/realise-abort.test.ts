// Aborting a build with the real Nix on this machine kills the builder and everything it started,
// also when nix-store itself does not answer SIGTERM and has to be killed (its builder, in a
// session of its own, would otherwise go on running as an orphan).
import assert from 'node:assert/strict'
import { randomBytes, randomInt } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import { CliStore, KILL_GRACE_MS } from '../../node/nix/cli-store.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'
import { waitFor } from '../helpers/wait.ts'

const store = new CliStore()

/** PIDs of processes whose command line contains `marker`. */
function processesWith (marker: string): number[] {
  const out: number[] = []
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ').includes(marker)) out.push(Number(e))
    } catch {}
  }
  return out
}

describe('aborting a build', { timeout: 60_000 }, () => {
  let tmp: { dir: string, cleanup: () => Promise<void> }
  before(async () => { tmp = await tempDir('mb-abort-') })
  after(async () => { await tmp.cleanup() })

  /** A builder that starts a child of its own (a sleep with a unique duration, to find it by). */
  async function sleeper (): Promise<{ drv: string, sleep: string }> {
    const sleep = `/bin/sleep 59.${randomInt(100_000, 999_999)}`
    const [drv] = await instantiate(shDrv(`abort-${randomBytes(6).toString('hex')}`, `${sleep}; echo > $out`), tmp.dir)
    assert.ok(drv !== undefined)
    return { drv, sleep }
  }

  it('kills the builder and its children when nix-store stops as asked', async () => {
    const { drv, sleep } = await sleeper()
    const controller = new AbortController()
    const build = store.realise(drv, { signal: controller.signal })
    await waitFor(() => processesWith(sleep).length > 0, 20_000, 'the builder to start')
    controller.abort(new Error('lease lost'))
    await assert.rejects(build, { name: 'AbortError' })
    await waitFor(() => processesWith(sleep).length === 0, 5_000, 'the builder\'s sleep to be gone')
  })

  it('kills the builder\'s process group when nix-store ignores SIGTERM and is killed', async () => {
    const { drv, sleep } = await sleeper()
    const controller = new AbortController()
    const build = store.realise(drv, { signal: controller.signal })
    await waitFor(() => processesWith(sleep).length > 0, 20_000, 'the builder to start')
    const nixStore = processesWith(`nix-store --realise ${drv}`)
    assert.equal(nixStore.length, 1)
    // A stopped nix-store keeps SIGTERM pending: only the SIGKILL after the grace time ends it.
    process.kill(nixStore[0] as number, 'SIGSTOP')
    controller.abort(new Error('lease lost'))
    await assert.rejects(build, { name: 'AbortError' })
    await waitFor(() => processesWith(sleep).length === 0, KILL_GRACE_MS, 'the orphaned sleep to be killed with its group')
  })
})
