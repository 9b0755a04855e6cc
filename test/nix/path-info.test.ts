// `meshbuild path-info` against the real Nix: the narinfos it prints are byte-identical to what
// `nix copy --to 'file://…?compression=none&secret-key=…'` writes, and a binary cache assembled
// by hand from them (plus `nix-store --dump`) is one that `nix store verify` and `nix copy`
// accept — and refuse once a narinfo is tampered with.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { cp, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { exec, type ExecResult } from '../../node/nix/exec.ts'
import { nixEnv } from '../../node/nix/nix-config.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { formatNarinfo, parseNarinfo, type NarInfo } from '../../protocols/nix/narinfo.ts'
import { signNarinfo } from '../../protocols/nix/signature.ts'
import { readSecretKeyFile, type SecretKey } from '../../protocols/nix/signing-key.ts'
import { storePathHashPart } from '../../protocols/nix/store-path.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'

const TEST_TIMEOUT = 120_000
const CMD_TIMEOUT_MS = 60_000
const MESHBUILD = join(import.meta.dirname, '../../bin/meshbuild.js')
const tag = randomBytes(6).toString('hex')

// top is a directory with a file naming dep, a symlink to dep, an executable, a reference to
// itself and one to a text-hashed input source (which has a CA and no deriver).
const expr = `let
  src = builtins.toFile "src-${tag}" "source ${tag}";
  dep = ${shDrv(`dep-${tag}`, `echo dep-${tag} > $out`)};
  top = ${shDrv(`top-${tag}`, [
    '/bin/mkdir $out',
    'echo ${dep} > $out/ref',
    'echo ${src} > $out/src',
    'echo $out > $out/self',
    `echo "#!/bin/sh" > $out/run; echo ${tag} >> $out/run; /bin/chmod +x $out/run`,
    '/bin/ln -s ${dep} $out/link'
  ].join('; '))};
in { inherit top; }`

let dir: string
let cleanup: () => Promise<void>
/** Paths by role: top's output, dep's output, the text source, top's .drv. */
const p = { top: '', dep: '', src: '', drv: '' }
let all: string[]
/** Key files: `a` signs with --sign-key, `b` has signed dep in the store, `c` signs nothing. */
const keys: Record<'a' | 'b' | 'c', { sec: string, pub: string, secretKey?: SecretKey }> = {
  a: { sec: '', pub: '' }, b: { sec: '', pub: '' }, c: { sec: '', pub: '' }
}

async function meshbuild (...args: string[]): Promise<ExecResult> {
  return await exec(process.execPath, [MESHBUILD, ...args], { signal: AbortSignal.timeout(CMD_TIMEOUT_MS) })
}

/** A Nix command with its own narinfo cache directory, so no answer carries over between runs. */
async function nixRun (cmd: string, ...args: string[]): Promise<ExecResult> {
  const env = { ...nixEnv(), XDG_CACHE_HOME: join(dir, `xdg-${randomBytes(4).toString('hex')}`) }
  return await exec(cmd, args, { env, signal: AbortSignal.timeout(CMD_TIMEOUT_MS) })
}

async function ok (r: ExecResult, what: string): Promise<string> {
  assert.equal(r.code, 0, `${what} exited ${r.code}: ${r.stderr}`)
  return r.stdout.toString('utf8')
}

/** Our narinfos for `paths`, split at the blank lines between them. */
async function ourNarinfos (paths: string[], ...flags: string[]): Promise<string[]> {
  const out = await ok(await meshbuild('path-info', ...paths, ...flags), 'meshbuild path-info')
  const texts = out.split('\n\n').map((t, i, a) => i < a.length - 1 ? `${t}\n` : t)
  assert.equal(texts.length, paths.length, `expected ${paths.length} narinfos in:\n${out}`)
  return texts
}

/** A binary cache laid out as Nix's file:// store reads it, from our narinfos and nix-store --dump. */
async function makeCache (name: string, narinfos: string[]): Promise<string> {
  const root = join(dir, name)
  await mkdir(join(root, 'nar'), { recursive: true })
  await writeFile(join(root, 'nix-cache-info'), 'StoreDir: /nix/store\n')
  for (const text of narinfos) {
    const info = parseNarinfo(text)
    await writeFile(join(root, `${storePathHashPart(info.storePath)}.narinfo`), text)
    const nar = await exec('nix-store', ['--dump', info.storePath])
    assert.equal(nar.code, 0, nar.stderr)
    await writeFile(join(root, info.url), nar.stdout)
  }
  return root
}

/** `nix copy` of `path` from the cache into a fresh chroot store; the result and whether it is there. */
async function copyOut (cache: string, path: string, ...flags: string[]): Promise<{ r: ExecResult, valid: boolean }> {
  const dest = join(dir, `root-${randomBytes(4).toString('hex')}`)
  const r = await nixRun('nix', 'copy', '--from', `file://${cache}`, '--to', dest, ...flags, path)
  const check = await nixRun('nix-store', '--store', dest, '--check-validity', path)
  return { r, valid: check.code === 0 }
}

async function pub (k: 'a' | 'b' | 'c'): Promise<string> {
  return (await readFile(keys[k].pub, 'utf8')).trim()
}

before(async () => {
  const t = await tempDir('meshbuild-path-info-')
  dir = t.dir
  cleanup = t.cleanup
  const [drv] = await instantiate(expr, dir, ['top'])
  p.drv = drv ?? ''
  p.top = (await nix('nix-store', '--realise', p.drv)).trim()
  all = (await nix('nix-store', '--query', '--requisites', p.top)).trim().split('\n')
  p.dep = all.find(x => x.endsWith(`-dep-${tag}`)) ?? ''
  p.src = all.find(x => x.endsWith(`-src-${tag}`)) ?? ''
  assert.ok(p.dep !== '' && p.src !== '', `closure of ${p.top}: ${all.join(' ')}`)
  for (const k of ['a', 'b', 'c'] as const) {
    keys[k].sec = join(dir, `${k}.sec`)
    keys[k].pub = join(dir, `${k}.pub`)
    await ok(await meshbuild('key', 'generate', `test-${k}-${tag}`, '--secret-file', keys[k].sec, '--public-file', keys[k].pub), 'key generate')
    keys[k].secretKey = await readSecretKeyFile(keys[k].sec)
  }
  // A signature already in the store, which our narinfo must keep (and Nix reads our key file).
  await ok(await nixRun('nix', 'store', 'sign', '--key-file', keys.b.sec, p.dep), 'nix store sign')
})

after(async () => { await cleanup() })

describe('meshbuild path-info output', { timeout: TEST_TIMEOUT }, () => {
  it('is byte for byte what nix copy writes for an uncompressed cache signed with the same key', async () => {
    const paths = [p.top, p.dep, p.src, p.drv]
    const ours = await ourNarinfos(paths, '--sign-key', keys.a.sec)
    const theirs = join(dir, 'nix-none')
    const to = `file://${theirs}?compression=none&secret-key=${keys.a.sec}`
    await ok(await nixRun('nix', 'copy', '--to', to, p.top, p.dep, p.src), 'nix copy --to file://')
    // Given a .drv, nix copy means its outputs unless told --derivation.
    await ok(await nixRun('nix', 'copy', '--to', to, '--derivation', p.drv), 'nix copy --derivation --to file://')
    for (const [i, path] of paths.entries()) {
      const nixText = await readFile(join(theirs, `${storePathHashPart(path)}.narinfo`), 'utf8')
      assert.equal(ours[i], nixText, `narinfo of ${path}`)
    }
    // And the NAR file Nix wrote is named as our URL says.
    const nars = await readdir(join(theirs, 'nar'))
    for (const text of ours) assert.ok(nars.includes(parseNarinfo(text).url.slice('nar/'.length)), parseNarinfo(text).url)
  })

  it('agrees with a compressed nix copy on every field but URL, Compression, FileHash and FileSize', async () => {
    const paths = [p.top, p.dep, p.src]
    const ours = (await ourNarinfos(paths)).map(t => parseNarinfo(t))
    const theirs = join(dir, 'nix-xz')
    await ok(await nixRun('nix', 'copy', '--to', `file://${theirs}`, ...paths), 'nix copy --to file://')
    const strip = (i: NarInfo): Omit<NarInfo, 'url' | 'compression' | 'fileHash' | 'fileSize'> => {
      const { url: _u, compression: _c, fileHash: _h, fileSize: _s, ...rest } = i
      return rest
    }
    for (const [i, path] of paths.entries()) {
      const nixInfo = parseNarinfo(await readFile(join(theirs, `${storePathHashPart(path)}.narinfo`), 'utf8'))
      assert.equal(nixInfo.compression, 'xz')
      assert.deepEqual(strip(ours[i] as NarInfo), strip(nixInfo), `fields of ${path}`)
    }
    // Unsigned: exactly the store's signatures, which for dep is b's.
    assert.equal(ours[1]?.sigs.length, 1)
    assert.match(ours[1]?.sigs[0] ?? '', new RegExp(`^test-b-${tag}:`))
  })

  it('--json agrees with nix path-info --json --sigs, with full store paths', async () => {
    const paths = [p.top, p.dep, p.src, p.drv]
    const ours = JSON.parse(await ok(await meshbuild('path-info', ...paths, '--json', '--sign-key', keys.a.sec), 'path-info --json')) as Array<Record<string, unknown>>
    const nixJson = JSON.parse(await nix('nix', 'path-info', '--json', '--sigs', p.top, p.dep, p.src)) as Array<Record<string, unknown>>
    nixJson.push(...JSON.parse(await nix('nix', 'path-info', '--json', '--sigs', '--derivation', p.drv)) as Array<Record<string, unknown>>)
    assert.equal(ours.length, paths.length)
    for (const [i, path] of paths.entries()) {
      const o = ours[i] ?? {}
      const n = nixJson.find(e => e.path === path) ?? {}
      const narHash = Hash.parse(String(n.narHash)).toNix32()
      assert.equal(o.storePath, path)
      assert.equal(o.narHash, narHash)
      assert.equal(o.url, `nar/${narHash.slice('sha256:'.length)}.nar`)
      assert.equal(o.compression, 'none')
      assert.equal(o.narSize, n.narSize)
      assert.deepEqual(o.references, n.references)
      assert.equal(o.deriver, n.deriver ?? null)
      assert.equal(o.ca, n.ca ?? null)
      // Ours = the store's plus a's.
      const sigs = o.signatures as string[]
      const storeSigs = (n.signatures ?? []) as string[]
      assert.equal(sigs.length, storeSigs.length + 1, `signatures of ${path}: ${sigs.join(' ')}`)
      for (const s of storeSigs) assert.ok(sigs.includes(s))
      assert.ok(sigs.some(s => s.startsWith(`test-a-${tag}:`)))
    }
    assert.ok(String((ours[0]?.references as string[])[0]).startsWith('/nix/store/'))
  })

  it('follows a symlink to a store path, like ./result, and prints each path once', async () => {
    const link = join(dir, 'result')
    await symlink(p.dep, link)
    const out = await ok(await meshbuild('path-info', link, p.dep), 'path-info ./result')
    assert.equal(out, formatNarinfo(parseNarinfo(out)), 'a single narinfo')
    assert.equal(parseNarinfo(out).storePath, p.dep)
  })
})

describe('a binary cache built from meshbuild path-info output', { timeout: TEST_TIMEOUT }, () => {
  let cache: string
  let signed: string[]
  before(async () => {
    signed = await ourNarinfos(all, '--sign-key', keys.a.sec)
    cache = await makeCache('cache', signed)
  })

  it('passes nix store verify with our key trusted, and fails with another', async () => {
    const verify = async (trusted: string): Promise<ExecResult> =>
      await nixRun('nix', 'store', 'verify', '--store', `file://${cache}`, '--trusted-public-keys', trusted, '--sigs-needed', '1', '--all')
    await ok(await verify(await pub('a')), 'nix store verify with key a')
    const other = await verify(await pub('c'))
    assert.notEqual(other.code, 0)
    assert.match(other.stderr, new RegExp(`path '${p.top}' is untrusted`))
    assert.match(other.stderr, new RegExp(`path '${p.dep}' is untrusted`))
    // b signed dep in the store; that signature travelled in our narinfo, but top has none of b's.
    const b = await verify(await pub('b'))
    assert.notEqual(b.code, 0)
    assert.match(b.stderr, new RegExp(`path '${p.top}' is untrusted`))
    assert.doesNotMatch(b.stderr, new RegExp(`path '${p.dep}' is untrusted`))
  })

  it('nix copy brings the closure into a fresh store, contents and registration intact', async () => {
    const dest = join(dir, 'copied')
    await ok(await nixRun('nix', 'copy', '--from', `file://${cache}`, '--to', dest, '--trusted-public-keys', await pub('a'), p.top), 'nix copy --from')
    assert.equal(await readFile(join(dest, p.top, 'ref'), 'utf8'), `${p.dep}\n`)
    const copied = JSON.parse(await ok(await nixRun('nix', 'path-info', '--store', dest, '--json', '--sigs', ...all), 'path-info in copy')) as Array<{ path: string, narHash: string, references: string[], signatures?: string[] }>
    const local = JSON.parse(await nix('nix', 'path-info', '--json', ...all)) as Array<{ path: string, narHash: string, references: string[] }>
    for (const l of local) {
      const c = copied.find(e => e.path === l.path)
      assert.ok(c != null, `${l.path} copied`)
      assert.equal(c.narHash, l.narHash)
      assert.deepEqual(c.references, l.references)
    }
    assert.ok(copied.find(e => e.path === p.top)?.signatures?.some(s => s.startsWith(`test-a-${tag}:`)))
  })

  it('nix copy refuses it with an untrusted key', async () => {
    const { r, valid } = await copyOut(cache, p.top, '--trusted-public-keys', await pub('c'))
    assert.notEqual(r.code, 0)
    assert.match(r.stderr, /lacks a valid signature/)
    assert.equal(valid, false)
  })

  // Each case rewrites top's narinfo; `resign` signs the tampered one again with our key, so
  // only Nix's own check of the NAR against NarHash/NarSize can catch it.
  const tamperings: Array<{ name: string, edit: (i: NarInfo) => NarInfo, resign: boolean, refusal: RegExp }> = [
    { name: 'unchanged, re-signed (control)', edit: i => i, resign: true, refusal: /^$/ },
    { name: 'NarSize + 8', edit: i => ({ ...i, narSize: i.narSize + 8 }), resign: false, refusal: /lacks a valid signature/ },
    { name: 'a reference dropped', edit: i => ({ ...i, references: i.references.filter(r => !r.endsWith(`-dep-${tag}`)) }), resign: false, refusal: /lacks a valid signature/ },
    { name: 'NarHash of other bytes', edit: i => ({ ...i, narHash: Hash.of('sha256', 'other'), fileHash: Hash.of('sha256', 'other') }), resign: false, refusal: /lacks a valid signature/ },
    { name: 'NarSize + 8, re-signed', edit: i => ({ ...i, narSize: i.narSize + 8 }), resign: true, refusal: /size mismatch|hash mismatch/ },
    { name: 'NarHash of other bytes, re-signed', edit: i => ({ ...i, narHash: Hash.of('sha256', 'other') }), resign: true, refusal: /hash mismatch/ }
  ]
  for (const t of tamperings) {
    it(`tampered narinfo: ${t.name}`, async () => {
      const name = `tamper-${randomBytes(4).toString('hex')}`
      const copy = join(dir, name)
      await cp(cache, copy, { recursive: true })
      const file = join(copy, `${storePathHashPart(p.top)}.narinfo`)
      let info = t.edit(parseNarinfo(await readFile(file, 'utf8')))
      if (t.resign) info = signNarinfo({ ...info, sigs: [] }, keys.a.secretKey as SecretKey)
      await writeFile(file, formatNarinfo(info))
      const { r, valid } = await copyOut(copy, p.top, '--trusted-public-keys', await pub('a'))
      if (t.refusal.source === '^$') {
        assert.equal(r.code, 0, r.stderr)
        assert.equal(valid, true)
      } else {
        assert.notEqual(r.code, 0, `nix copy accepted a narinfo with ${t.name}`)
        assert.match(r.stderr, t.refusal)
        assert.equal(valid, false)
      }
    })
  }
})

describe('meshbuild path-info errors', { timeout: TEST_TIMEOUT }, () => {
  const missing = `/nix/store/${'0'.repeat(32)}-missing-${tag}`
  const cases: Array<{ name: string, args: () => Promise<string[]>, code: number, stderr: RegExp }> = [
    { name: 'a store path that is not valid', args: async () => [missing], code: 1, stderr: new RegExp(`not valid in the local store: '${missing}'`) },
    { name: 'one invalid among valid ones', args: async () => [p.top, missing, p.dep], code: 1, stderr: new RegExp(`'${missing}'`) },
    { name: 'not a store path at all', args: async () => ['/etc/hostname'], code: 1, stderr: /not a store path in \/nix\/store: '\/etc\/hostname'/ },
    { name: 'a missing key file', args: async () => [p.top, '--sign-key', join(dir, 'nope.sec')], code: 1, stderr: /cannot read secret key file .*nope\.sec/ },
    { name: 'a public key given as secret', args: async () => [p.top, '--sign-key', keys.a.pub], code: 1, stderr: /a\.pub: secret key .* has 32 bytes, expected 64 \(this looks like a public key\)/ },
    {
      name: 'a corrupt secret key',
      args: async () => {
        const text = await readFile(keys.a.sec, 'utf8')
        const [name, b64] = text.split(':')
        const bytes = Buffer.from(b64 ?? '', 'base64')
        bytes[40] = (bytes[40] ?? 0) ^ 1
        const bad = join(dir, 'corrupt.sec')
        await writeFile(bad, `${name}:${bytes.toString('base64')}`)
        return [p.top, '--sign-key', bad]
      },
      code: 1,
      stderr: /corrupt\.sec: secret key .* is corrupt/
    },
    { name: 'no path', args: async () => [], code: 2, stderr: /Not enough non-option arguments/ }
  ]
  for (const c of cases) {
    it(`exits ${c.code} for ${c.name}, printing nothing on stdout`, async () => {
      const r = await meshbuild('path-info', ...await c.args())
      assert.equal(r.code, c.code, r.stderr)
      assert.match(r.stderr, c.stderr)
      assert.equal(r.stdout.length, 0)
    })
  }

  it('--help says what is printed and how paths appear in --json', async () => {
    const r = await meshbuild('path-info', '--help')
    assert.equal(r.code, 0)
    const help = r.stdout.toString('utf8')
    assert.match(help, /--sign-key/)
    assert.match(help, /--json/)
    assert.match(help, /full store paths/)
    assert.match(help, /Compression none/)
  })
})
