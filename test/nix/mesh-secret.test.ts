// Mesh secrets through the real CLI: `key generate-mesh-secret`, what `join` makes of secret
// files (and of none), and the exit code of `submit` / `status` when no node runs.
import assert from 'node:assert/strict'
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { exec } from '../../node/nix/exec.ts'
import { OPEN_MESH_SECRET } from '../../protocols/mesh/constants.ts'
import { MIN_MESH_SECRET_LENGTH, resolveMeshSecret } from '../../node/cli/mesh-secret.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'

const CMD_TIMEOUT_MS = 60_000
const MESHBUILD = join(import.meta.dirname, '../../bin/meshbuild.js')
const USAGE = 2
const FAILURE = 1
const UNAVAILABLE = 3

/** The environment without any MESHBUILD_ variable of the caller's. */
function cleanEnv (extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MESHBUILD_')))
  return { ...env, ...extra }
}

async function meshbuild (args: string[], extraEnv: Record<string, string> = {}, input?: string): Promise<{ code: number, stdout: string, stderr: string }> {
  const r = await exec(process.execPath, [MESHBUILD, ...args], {
    env: cleanEnv(extraEnv),
    signal: AbortSignal.timeout(CMD_TIMEOUT_MS),
    ...(input !== undefined ? { input } : {})
  })
  return { code: r.code, stdout: r.stdout.toString('utf8'), stderr: r.stderr }
}

let dir: string
let cleanup: () => Promise<void>
before(async () => { ({ dir, cleanup } = await tempDir('meshbuild-secret-')) })
after(async () => { await cleanup() })

describe('meshbuild key generate-mesh-secret', () => {
  it('writes 32 random bytes as base64 and a newline, mode 0600, and prints the join command', async () => {
    const file = join(dir, 'a.secret')
    const r = await meshbuild(['key', 'generate-mesh-secret', file])
    assert.equal(r.code, 0, r.stderr)
    const text = await readFile(file, 'utf8')
    assert.match(text, /^[A-Za-z0-9+/]{43}=\n$/)
    assert.equal(Buffer.from(text.trim(), 'base64').length, 32)
    assert.equal((await stat(file)).mode & 0o777, 0o600)
    assert.match(r.stdout, new RegExp(`meshbuild join --mesh-secret-file ${file}`))
    const other = join(dir, 'b.secret')
    assert.equal((await meshbuild(['key', 'generate-mesh-secret', other])).code, 0)
    assert.notEqual(await readFile(other, 'utf8'), text, 'two secrets are the same')
  })

  it('refuses to overwrite an existing file, and leaves it as it was', async () => {
    const file = join(dir, 'keep.secret')
    await writeFile(file, 'the secret of a running mesh\n', { mode: 0o644 })
    const r = await meshbuild(['key', 'generate-mesh-secret', file])
    assert.equal(r.code, FAILURE)
    assert.match(r.stderr, new RegExp(`${file} already exists`))
    assert.equal(await readFile(file, 'utf8'), 'the secret of a running mesh\n')
    assert.equal((await stat(file)).mode & 0o777, 0o644)
  })

  it('has --help and wants a file', async () => {
    const help = await meshbuild(['key', 'generate-mesh-secret', '--help'])
    assert.equal(help.code, 0)
    assert.match(help.stdout, /generate-mesh-secret <file>/)
    assert.equal((await meshbuild(['key', 'generate-mesh-secret'])).code, USAGE)
  })
})

describe('join with a bad mesh secret', () => {
  const cases: Array<{ name: string, make: (file: string) => Promise<void>, why: RegExp, env?: boolean }> = [
    { name: 'a missing file', make: async () => {}, why: /does not exist/ },
    { name: 'an empty file', make: async (f) => { await writeFile(f, '\n\n') }, why: /is empty/ },
    { name: 'a short secret', make: async (f) => { await writeFile(f, 'x'.repeat(MIN_MESH_SECRET_LENGTH - 1)) }, why: /fewer than 16/ },
    { name: 'a directory', make: async (f) => { await mkdir(f) }, why: /is a directory/ },
    { name: 'a huge file', make: async (f) => { await writeFile(f, 'x'.repeat(100_000)) }, why: /not a mesh secret/ },
    { name: 'a short secret named by the env variable', make: async (f) => { await writeFile(f, 'short') }, why: /fewer than 16/, env: true }
  ]
  for (const c of cases) {
    it(`exits with the usage code naming the file: ${c.name}`, async () => {
      const file = join(dir, `bad-${Math.random().toString(36).slice(2)}`)
      await c.make(file)
      const args = ['join', '--data-dir', join(dir, 'bad-node'), '--no-mdns', '--listen', '/ip4/127.0.0.1/tcp/0']
      const r = c.env === true
        ? await meshbuild(args, { MESHBUILD_MESH_SECRET_FILE: file })
        : await meshbuild([...args, '--mesh-secret-file', file])
      assert.equal(r.code, USAGE, r.stderr)
      assert.match(r.stderr, new RegExp(`mesh secret file ${file} `))
      assert.match(r.stderr, c.why)
    })
  }

  it('refuses the old MESHBUILD_MESH_SECRET value variable rather than ignore it', async () => {
    const r = await meshbuild(['join', '--data-dir', join(dir, 'old-env'), '--no-mdns'], { MESHBUILD_MESH_SECRET: 'a secret of old' })
    assert.equal(r.code, USAGE)
    assert.match(r.stderr, /MESHBUILD_MESH_SECRET is no longer read.*MESHBUILD_MESH_SECRET_FILE/)
  })

  it('refuses --open with --mesh-secret-file', async () => {
    const file = join(dir, 'a.secret')
    const r = await meshbuild(['join', '--data-dir', join(dir, 'both'), '--no-mdns', '--open', '--mesh-secret-file', file])
    assert.equal(r.code, USAGE)
    assert.match(r.stderr, /--open and --mesh-secret-file/)
  })

  it('a file the user cannot read is named (as a non-root user)', { skip: process.getuid?.() === 0 ? 'root reads every file' : false }, async () => {
    const file = join(dir, 'unreadable.secret')
    await writeFile(file, 'x'.repeat(40))
    await chmod(file, 0o000)
    const r = await meshbuild(['join', '--data-dir', join(dir, 'unreadable'), '--no-mdns', '--mesh-secret-file', file])
    assert.equal(r.code, USAGE)
    assert.match(r.stderr, /is not readable/)
  })
})

describe('resolveMeshSecret', () => {
  it('makes <data-dir>/mesh.secret (0600) on first start and reuses it after', async () => {
    const dataDir = join(dir, 'fresh', 'data')
    const first = await resolveMeshSecret({ open: false, dataDir, env: {} })
    assert.equal(first.source, 'generated')
    assert.equal(first.membership, 'closed')
    assert.equal(first.file, join(dataDir, 'mesh.secret'))
    assert.equal((await stat(join(dataDir, 'mesh.secret'))).mode & 0o777, 0o600)
    assert.notEqual(first.secret, OPEN_MESH_SECRET)
    const second = await resolveMeshSecret({ open: false, dataDir, env: {} })
    assert.equal(second.source, 'data-dir')
    assert.equal(second.secret, first.secret)
    const other = await resolveMeshSecret({ open: false, dataDir: join(dir, 'fresh', 'other'), env: {} })
    assert.notEqual(other.secret, first.secret)
  })

  it('prefers --open, then --mesh-secret-file, then the env variable', async () => {
    const dataDir = join(dir, 'order')
    const optionFile = join(dir, 'opt.secret')
    const envFile = join(dir, 'env.secret')
    await writeFile(optionFile, 'o'.repeat(32))
    await writeFile(envFile, 'e'.repeat(32))
    const env = { MESHBUILD_MESH_SECRET_FILE: envFile }
    assert.deepEqual(await resolveMeshSecret({ open: true, dataDir, env }), { secret: OPEN_MESH_SECRET, membership: 'open', source: 'open' })
    assert.equal((await resolveMeshSecret({ open: false, file: optionFile, dataDir, env })).secret, 'o'.repeat(32))
    assert.equal((await resolveMeshSecret({ open: false, dataDir, env })).secret, 'e'.repeat(32))
    await assert.rejects(stat(join(dataDir, 'mesh.secret')), 'a node given a secret made one of its own too')
  })
})

describe('submit and status with no node running', () => {
  it('exit with 3 (unavailable) and say how to start one', async () => {
    const dataDir = join(dir, 'no-node')
    const s = await meshbuild(['status', '--data-dir', dataDir])
    assert.equal(s.code, UNAVAILABLE, s.stderr)
    assert.match(s.stderr, /no meshbuild node answers at .*control\.sock.*meshbuild join/)
    assert.equal((await meshbuild(['status', '--json', '--data-dir', dataDir])).code, UNAVAILABLE)
    // A socket file left by a dead node: connection refused, still unavailable.
    await mkdir(dataDir, { recursive: true })
    const [drv] = await instantiate(shDrv(`no-node-${Math.random().toString(36).slice(2)}`, 'echo x > $out'), dir)
    const sub = await meshbuild(['submit', '-', '--data-dir', dataDir], {}, `${drv ?? ''}\n`)
    assert.equal(sub.code, UNAVAILABLE, sub.stderr)
    assert.match(sub.stderr, /no meshbuild node answers/)
  })
})
