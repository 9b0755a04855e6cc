// The NAR encoder, hasher and restorer against the real Nix: our bytes equal `nix-store --dump`,
// our NarHash/NarSize equal what `nix path-info` reports after `nix-store --add`, a restore
// reproduces the tree (checked by dumping it again and against `nix-store --restore`), and the
// `meshbuild nar` commands behave end to end.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmod, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { fileURLToPath } from 'node:url'
import { exec, execText } from '../../node/nix/exec.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { nixEnv } from '../../node/nix/nix-config.ts'
import { encodeNar } from '../../protocols/nix/nar-encoder.ts'
import { narDigestOfPath } from '../../protocols/nix/nar-hash.ts'
import { NarRestoreTargetExistsError, restoreNar } from '../../protocols/nix/nar-restore.ts'
import { tempDir } from '../helpers/nix.ts'

const MESHBUILD = fileURLToPath(new URL('../../bin/meshbuild.js', import.meta.url))

/** Deterministic bytes (sha256 in counter mode), so repeated runs add the same store paths. */
function bytes (seed: string, size: number): Buffer {
  const out = Buffer.alloc(size)
  for (let i = 0, block = 0; i < size; block++) {
    const h = createHash('sha256').update(`${seed}:${block}`).digest()
    i += h.copy(out, i, 0, Math.min(32, size - i))
  }
  return out
}

/** The tree every test uses; see the comments for what each entry exercises. */
async function makeTree (root: string): Promise<void> {
  await mkdir(join(root, 'a', 'b', 'c'), { recursive: true })
  await writeFile(join(root, 'a', 'b', 'c', 'deep.txt'), 'deep\n')
  await mkdir(join(root, 'empty-dir')) // an empty directory
  await mkdir(join(root, 'nested-empty', 'inner'), { recursive: true })
  await writeFile(join(root, 'empty-file'), '') // zero bytes, no padding
  for (const n of [1, 7, 8, 9, 13, 4095, 65537]) await writeFile(join(root, `size-${n}`), bytes(`size${n}`, n)) // padding 0..7
  await writeFile(join(root, 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 }) // executable
  await writeFile(join(root, 'owner-x-only'), 'x', { mode: 0o700 })
  await writeFile(join(root, 'group-x-only'), 'x')
  await chmod(join(root, 'group-x-only'), 0o650) // Nix looks at the owner's x bit only
  await symlink('a/b/c/deep.txt', join(root, 'link-relative'))
  await symlink('../../nowhere/at/all', join(root, 'link-dangling'))
  await symlink('/nonexistent/absolute', join(root, 'link-absolute'))
  await symlink('a', join(root, 'link-to-dir')) // archived as a link, not followed
  for (const name of ['é', '日本語.txt', 'Zebra', 'apple', 'a-b', 'a.b', 'a_b']) await writeFile(join(root, name), name)
  // U+FF21 sorts after U+1F642 in UTF-16 (JS string order) but before it in UTF-8 byte order.
  await writeFile(join(root, '\uFF21'), 'fullwidth A')
  await writeFile(join(root, '\u{1F642}'), 'emoji')
  // A name that is not UTF-8 at all: Nix names are bytes.
  await writeFile(Buffer.concat([Buffer.from(join(root, 'bytes-')), Buffer.from([0xff, 0x80])]), 'not utf-8')
  await writeFile(join(root, 'big.bin'), bytes('big', 5 * 1024 * 1024 + 3)) // several MiB, odd size
}

async function collect (source: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const c of source) parts.push(Buffer.from(c))
  return Buffer.concat(parts)
}

async function * once (data: Uint8Array): AsyncGenerator<Uint8Array> { yield data }

async function nixDump (path: string): Promise<Buffer> {
  const r = await exec('nix-store', ['--dump', path])
  assert.equal(r.code, 0, r.stderr)
  return r.stdout
}

interface CliResult { code: number | null, stdout: Buffer, stderr: string }

/** Runs `meshbuild args` with `input` on stdin, within `timeoutMs`. */
async function cli (args: string[], input?: Uint8Array, timeoutMs = 60_000): Promise<CliResult> {
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MESHBUILD, ...args], { env: nixEnv(), timeout: timeoutMs })
    const out: Buffer[] = []
    let err = ''
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    child.on('error', reject)
    child.on('close', code => { resolve({ code, stdout: Buffer.concat(out), stderr: err }) })
    child.stdin.on('error', () => {})
    child.stdin.end(input)
  })
}

describe('NAR against the real Nix', () => {
  let base: string
  let cleanup: () => Promise<void>
  let tree: string
  let nixNar: Buffer

  before(async () => {
    ({ dir: base, cleanup } = await tempDir('meshbuild-nar-'))
    tree = join(base, 'tree')
    await mkdir(tree)
    await makeTree(tree)
    nixNar = await nixDump(tree)
  })
  after(async () => { await cleanup() })

  it('encodes a tree to the same bytes as nix-store --dump', async () => {
    const ours = await collect(encodeNar(tree))
    assert.equal(ours.length, nixNar.length)
    assert.ok(ours.equals(nixNar), 'NAR bytes differ from nix-store --dump')
  })

  it('gives the same bytes whatever the chunk size', async () => {
    for (const chunkSize of [64, 4096, 65536]) {
      const ours = await collect(encodeNar(tree, { chunkSize }))
      assert.ok(ours.equals(nixNar), `chunkSize ${chunkSize}`)
    }
  })

  it('encodes single files and symlinks as nix-store --dump does', async () => {
    for (const name of ['run.sh', 'empty-file', 'size-13', 'group-x-only', 'link-dangling', 'link-to-dir', 'big.bin']) {
      const p = join(tree, name)
      assert.ok((await collect(encodeNar(p))).equals(await nixDump(p)), name)
    }
  })

  it('computes the NarHash and NarSize nix path-info reports after nix-store --add', async () => {
    // --add copies the tree into the store under its base name; path-info reads its NAR hash.
    const named = join(base, 'meshbuild-nar-tree')
    await execText('cp', ['-a', tree, named])
    const storePath = (await execText('nix-store', ['--add', named])).trim()
    const info = JSON.parse(await execText('nix', ['path-info', '--json', storePath])) as Array<{ narHash: string, narSize: number }>
    const digest = await narDigestOfPath(named)
    // Nix 2.8 prints SRI here (sha256-<base64>); `nix-store --query --hash` prints sha256:<nix32>.
    assert.equal(digest.narHash.toSri(), info[0]?.narHash)
    assert.equal(digest.narSize, info[0]?.narSize)
    assert.equal(digest.narHash.toNix32(), (await execText('nix-store', ['--query', '--hash', storePath])).trim())
    assert.equal(String(digest.narSize), (await execText('nix-store', ['--query', '--size', storePath])).trim())
    // And of the store path itself, which the signer will hash.
    const fromStore = await narDigestOfPath(storePath)
    assert.ok(fromStore.narHash.equals(Hash.parse(info[0]?.narHash ?? '')))
  })

  it('restores a NAR to a tree that dumps to the same NAR, like nix-store --restore', async () => {
    const ours = join(base, 'restored-ours')
    const theirs = join(base, 'restored-nix')
    await restoreNar(encodeNar(tree, { chunkSize: 4096 }), ours)
    const r = await exec('nix-store', ['--restore', theirs], { input: nixNar })
    assert.equal(r.code, 0, r.stderr)
    assert.ok((await nixDump(ours)).equals(nixNar), 'our restore dumps differently')
    assert.ok((await nixDump(ours)).equals(await nixDump(theirs)))
    // The non-UTF-8 name came back byte for byte.
    const names = await readdir(ours, { encoding: 'buffer' })
    assert.ok(names.some(n => n.equals(Buffer.from([0x62, 0x79, 0x74, 0x65, 0x73, 0x2d, 0xff, 0x80]))))
    assert.equal((await readFile(join(ours, 'link-dangling'), 'utf8').catch((e: NodeJS.ErrnoException) => e.code)), 'ENOENT')
  })

  it('restores NARs whose root is a file or a symlink', async () => {
    for (const name of ['run.sh', 'empty-file', 'link-relative']) {
      const target = join(base, `single-${name}`)
      const nar = await nixDump(join(tree, name))
      await restoreNar(once(nar), target)
      assert.ok((await nixDump(target)).equals(nar), name)
    }
  })

  it('refuses a target that exists and leaves it alone', async () => {
    const target = join(base, 'exists')
    await writeFile(target, 'keep me')
    await assert.rejects(restoreNar(once(nixNar), target), (e: Error) => e instanceof NarRestoreTargetExistsError && e.name === 'NarRestoreTargetExistsError')
    assert.equal(await readFile(target, 'utf8'), 'keep me')
  })

  it('leaves nothing behind when the NAR is bad halfway through', async () => {
    const parent = join(base, 'half')
    await mkdir(parent)
    const target = join(parent, 'out')
    await assert.rejects(restoreNar(once(nixNar.subarray(0, nixNar.length - 1000)), target), { name: 'NarFormatError' })
    assert.deepEqual(await readdir(parent), [])
  })

  describe('meshbuild nar', () => {
    it('dump-path writes the same bytes as nix-store --dump', async () => {
      const r = await cli(['nar', 'dump-path', tree])
      assert.equal(r.code, 0, r.stderr)
      assert.ok(r.stdout.equals(nixNar), 'CLI output differs from nix-store --dump')
    })

    it('restore reads a NAR from stdin and writes the tree', async () => {
      const target = join(base, 'cli-restored')
      const r = await cli(['nar', 'restore', target], nixNar)
      assert.equal(r.code, 0, r.stderr)
      assert.ok((await nixDump(target)).equals(nixNar))
    })

    it('restore of a truncated NAR exits 1, names the offset and leaves no directory', async () => {
      const parent = join(base, 'cli-truncated')
      await mkdir(parent)
      const r = await cli(['nar', 'restore', join(parent, 'out')], nixNar.subarray(0, 5000))
      assert.equal(r.code, 1)
      assert.match(r.stderr, /invalid NAR on stdin: NAR ends inside .* at byte 5000/)
      assert.deepEqual(await readdir(parent), [])
    })

    it('restore of something that is not a NAR exits 1', async () => {
      const target = join(base, 'cli-garbage')
      const r = await cli(['nar', 'restore', target], Buffer.from('hello, this is not a NAR at all\n'))
      assert.equal(r.code, 1)
      assert.match(r.stderr, /not a NAR/)
      assert.deepEqual((await readdir(base)).filter(n => n.includes(basename(target))), [])
    })

    it('restore refuses an existing directory', async () => {
      const r = await cli(['nar', 'restore', tree], nixNar)
      assert.equal(r.code, 1)
      assert.match(r.stderr, /already exists/)
    })

    it('dump-path stops quietly when its reader goes away (EPIPE)', async () => {
      const script = `${JSON.stringify(process.execPath)} ${JSON.stringify(MESHBUILD)} nar dump-path ${JSON.stringify(tree)} | head -c 100 > /dev/null; echo "exit=\${PIPESTATUS[0]}"`
      const r = await exec('bash', ['-c', script], { signal: AbortSignal.timeout(60_000) })
      assert.equal(r.stdout.toString().trim(), 'exit=1')
      assert.doesNotMatch(r.stderr, /Unhandled|at .*\.ts/)
    })

    it('dump-path of a missing path exits 1', async () => {
      const r = await cli(['nar', 'dump-path', join(base, 'no-such-path')])
      assert.equal(r.code, 1)
      assert.match(r.stderr, /cannot archive .*no-such-path/)
    })

    it('--help explains each command', async () => {
      for (const [cmd, says] of [['dump-path', /nix-store --dump/], ['restore', /must not exist/]] as const) {
        const r = await cli(['nar', cmd, '--help'])
        assert.equal(r.code, 0)
        assert.match(r.stdout.toString(), says)
      }
    })
  })
})
