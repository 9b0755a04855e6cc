// The state database on a real LevelDB (no Nix): records survive a reopen, a failed write reaches
// flush() and the log, and one failure does not stop the writes queued after it.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { Level } from 'level'
import { StateDb } from '../../node/state/state-db.ts'
import type { Job } from '../../node/scheduler/job.ts'
import type { Logger } from '../../node/log.ts'

const drv = (name: string): string => `/nix/store/${'b'.repeat(32)}-${name}.drv`

function job (name: string): Job {
  return { drvPath: drv(name), submissionId: 's1', state: 'queued' } as unknown as Job
}

function recordingLog (): { log: Logger, errors: string[] } {
  const errors: string[] = []
  const log: Logger = { error: (m) => { errors.push(m) }, warn: () => {}, info: () => {}, debug: () => {}, child: () => log }
  return { log, errors }
}

async function withDir (fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'meshbuild-state-'))
  try { await fn(dir) } finally { await rm(dir, { recursive: true, force: true }) }
}

describe('StateDb', () => {
  it('keeps jobs, submissions and the sign queue across a reopen', async () => {
    await withDir(async (dir) => {
      const db = new StateDb(join(dir, 'state'))
      await db.open()
      db.putJob(job('a'))
      db.putSubmission({ id: 's1', priority: 0, drvPaths: [drv('a')] } as never)
      db.queueForSigner(['/p/1', '/p/2', '/p/3'])
      db.dequeueForSigner(['/p/2'])
      await db.flush()
      await db.close()

      const again = new StateDb(join(dir, 'state'))
      await again.open()
      assert.deepEqual((await again.loadJobs()).map(j => j.drvPath), [drv('a')])
      assert.deepEqual((await again.loadSubmissions()).map(s => s.id), ['s1'])
      assert.deepEqual(await again.signQueue(), ['/p/1', '/p/3'])
      await again.close()
    })
  })

  it('reports a failed write at flush() and in the log, once, and goes on with later writes', async () => {
    await withDir(async (dir) => {
      const { log, errors } = recordingLog()
      const db = new StateDb(join(dir, 'state'), log)
      await db.open()
      // A record LevelDB's JSON encoding refuses: the sublevel put fails, the database stays open.
      const unencodable = { ...job('lost'), size: 1n } as unknown as Job
      db.putJob(unencodable)
      db.putJob(job('kept'))
      db.putJob({ ...unencodable, drvPath: drv('lost2') })
      await assert.rejects(db.flush(), (err: Error) => {
        assert.equal(err.name, 'StateWriteError')
        assert.match(err.message, /2 state writes failed/)
        assert.ok(err.message.includes(drv('lost')) && err.message.includes(drv('lost2')), err.message)
        return true
      })
      assert.equal(errors.length, 2, errors.join('\n'))
      await db.flush() // reported once: nothing failed since
      assert.deepEqual((await db.loadJobs()).map(j => j.drvPath), [drv('kept')])
      await db.close()
    })
  })

  it('reports a write on a closed database as one StateWriteError', async () => {
    await withDir(async (dir) => {
      const db = new StateDb(join(dir, 'state'))
      await db.open()
      await db.close()
      db.queueForSigner(['/p/lost'])
      await assert.rejects(db.flush(), { name: 'StateWriteError', message: /sign queue \+1: .*not open/ })
    })
  })

  it('moves records of the layout before sublevels into them on open', async () => {
    await withDir(async (dir) => {
      const raw = new Level<string, string>(join(dir, 'state'), { valueEncoding: 'utf8' })
      await raw.open()
      await raw.put(`job\0${drv('old')}`, JSON.stringify(job('old')))
      await raw.put('sign\0/p/old', JSON.stringify({ at: 1 }))
      await raw.close()

      const db = new StateDb(join(dir, 'state'))
      await db.open()
      assert.deepEqual((await db.loadJobs()).map(j => j.drvPath), [drv('old')])
      assert.deepEqual(await db.signQueue(), ['/p/old'])
      await db.close()

      const check = new Level<string, string>(join(dir, 'state'), { valueEncoding: 'utf8' })
      await check.open()
      assert.deepEqual(await check.keys({ gte: 'job\0', lt: 'job\0\xff' }).all(), [])
      await check.close()
    })
  })
})
