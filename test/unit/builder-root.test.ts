// The builder socket's root: a worker's outputs unpacked at <root>/nix/store/<name> for Nix to
// read, checked as any import is. A NAR whose bytes are not what its info claims (a lying peer)
// leaves nothing there; what the store has already is not fetched; what Nix copied is swept.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, lstat, mkdir, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BuilderRoot } from '../../node/builder/builder-root.ts'
import { encodeNar } from '../../protocols/nix/nar-encoder.ts'
import { narDigestOfPath } from '../../protocols/nix/nar-hash.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { createLogger } from '../../node/log.ts'
import type { ImportInfo, NarEntry } from '../../node/nix/store-backend.ts'
import { tempDir } from '../helpers/temp-dir.ts'

const OUT = '/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-output'
const DEP = '/nix/store/1b9p07z77phvv2hh6gm9f9j3rkh7j2ha-dep'
const log = createLogger('test', 'error')

async function tree (dir: string): Promise<{ info: ImportInfo, nar: Buffer }> {
  await mkdir(join(dir, 'bin'), { recursive: true })
  await writeFile(join(dir, 'bin', 'hello'), '#!/bin/sh\necho hi\n')
  await chmod(join(dir, 'bin', 'hello'), 0o755)
  await writeFile(join(dir, 'data'), 'some data\n')
  await symlink('bin/hello', join(dir, 'link'))
  const chunks: Uint8Array[] = []
  for await (const c of encodeNar(dir)) chunks.push(Buffer.from(c))
  const nar = Buffer.concat(chunks)
  const { narHash, narSize } = await narDigestOfPath(dir)
  return { info: { path: OUT, narHash, narSize, references: [DEP], signatures: ['peer-1:c2ln'] }, nar }
}

async function * entries (path: string, nar: Buffer): AsyncGenerator<NarEntry> {
  yield { path, nar: (async function * () { yield nar.subarray(0, 10); yield nar.subarray(10) })() }
}

describe('the builder root', () => {
  it('unpacks an output so that it dumps to the same NAR, and answers for it with its registration', async () => {
    const { dir, cleanup } = await tempDir()
    try {
      const { info, nar } = await tree(join(dir, 'src'))
      const root = new BuilderRoot(join(dir, 'root'), { isValid: async () => new Set() }, log)
      await root.start()
      try {
        assert.deepEqual((await root.importNars([info], entries(OUT, nar))).imported, [OUT])
        const unpacked = join(dir, 'root/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-output')
        assert.ok((await narDigestOfPath(unpacked)).narHash.equals(info.narHash), 'Nix would read another NAR from the root than the peer sent')
        assert.equal(((await lstat(join(unpacked, 'bin', 'hello'))).mode & 0o100) !== 0, true, 'the executable bit was lost')
        assert.equal(await readlink(join(unpacked, 'link')), 'bin/hello')
        assert.equal(await readFile(join(unpacked, 'data'), 'utf8'), 'some data\n')
        assert.deepEqual(root.pathInfo(OUT)?.references, [DEP])
        assert.deepEqual(root.pathInfo(OUT)?.signatures, ['peer-1:c2ln'])
      } finally { root.stop() }
    } finally { await cleanup() }
  })

  it('refuses a NAR whose bytes are not what its info claims, naming the path, and leaves nothing in the root', async () => {
    const { dir, cleanup } = await tempDir()
    try {
      const { info, nar } = await tree(join(dir, 'src'))
      const root = new BuilderRoot(join(dir, 'root'), { isValid: async () => new Set() }, log)
      await root.start()
      try {
        const lying = { ...info, narHash: Hash.of('sha256', 'something else') }
        await assert.rejects(root.importNars([lying], entries(OUT, nar)), (err: Error) => {
          assert.equal(err.name, 'NarHashMismatch')
          assert.match(err.message, /0c6kzph7l0dcbfmjap64f0czdafn3b7x-output/)
          return true
        })
        assert.deepEqual(await readdir(join(dir, 'root/nix/store')), [])
        assert.equal(root.pathInfo(OUT), undefined)
        await assert.rejects(root.importNars([info], entries(DEP, nar)), { name: 'NarOutOfOrder' })
      } finally { root.stop() }
    } finally { await cleanup() }
  })

  it('counts what the store has as valid (not fetched again), and sweeps the outputs Nix has copied into the store', async () => {
    const { dir, cleanup } = await tempDir()
    try {
      const { info, nar } = await tree(join(dir, 'src'))
      const inStore = new Set([DEP])
      const root = new BuilderRoot(join(dir, 'root'), { isValid: async (ps) => new Set(ps.filter(p => inStore.has(p))) }, log)
      await root.start()
      try {
        await root.importNars([info], entries(OUT, nar))
        assert.deepEqual([...await root.isValid([OUT, DEP, '/nix/store/2aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x'])].sort(), [DEP, OUT].sort())
        assert.equal(await root.sweep(), 0, 'an output Nix has not copied yet was removed')
        inStore.add(OUT)
        assert.equal(await root.sweep(), 1)
        assert.deepEqual(await root.listed(), [])
        assert.equal(root.pathInfo(OUT), undefined)
      } finally { root.stop() }
    } finally { await cleanup() }
  })
})
