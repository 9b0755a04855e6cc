import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Hash } from '../../protocols/nix/hash.ts'
import { type NarInfo, formatNarinfo, parseNarinfo } from '../../protocols/nix/narinfo.ts'
import {
  FingerprintError, checkDetached, fingerprint, signDetached, signNarinfo, verifyDetached, verifyNarinfo
} from '../../protocols/nix/signature.ts'
import {
  KeyFormatError, type PublicKey, type SecretKey, formatPublicKey, formatSecretKey, generateKeyPair, parsePublicKey,
  parseSecretKey, publicKeyOf, readPublicKeyFile, readSecretKeyFile, secretKeyFromSeed
} from '../../protocols/nix/signing-key.ts'
import { exec } from '../../node/nix/exec.ts'
import { type NixSettings, nixEnv } from '../../node/nix/nix-config.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'
import { nixTopNarinfo } from '../helpers/narinfo-fixtures.ts'

// A key made by `nix-store --generate-binary-cache-key test-1`, and a narinfo whose Sig
// `nix store sign` made with it (Nix 2.8, this machine).
const NIX_PUBLIC = 'test-1:0nbRgQ0otGbY0C+jfMB1wrOHVnkS7TbATE3b/8JxjdA='
const NIX_SIG = 'test-1:920iT2R5KvghScEJqy452sHFaLTXp+O1a8uvZGEObZYtFRwSOd1UDOteGomsiT9nxr5JO2/OnUwe3o3SgxH1Cg=='
const TOP = nixTopNarinfo(NIX_SIG)
const TOP_FINGERPRINT = '1;/nix/store/vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top;' +
  'sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca;160;/nix/store/1an0wjmmnkdpssynpji7civ9n4hlp17q-dep'

describe('signing keys', () => {
  it('generates pairs that format and parse back in Nix\'s layout (64-byte secret = seed + public)', () => {
    const { secretKey, publicKey } = generateKeyPair('cache.example.org-1')
    const secretText = formatSecretKey(secretKey)
    const publicText = formatPublicKey(publicKey)
    assert.match(secretText, /^cache\.example\.org-1:[A-Za-z0-9+/]{86}==$/)
    assert.match(publicText, /^cache\.example\.org-1:[A-Za-z0-9+/]{43}=$/)
    assert.deepEqual(parseSecretKey(secretText), secretKey)
    assert.deepEqual(parsePublicKey(publicText), publicKey)
    assert.deepEqual(publicKeyOf(secretKey), publicKey)
    assert.deepEqual(secretKey.secret.subarray(32), publicKey.key)
    assert.notDeepEqual(generateKeyPair('x').secretKey.secret, generateKeyPair('x').secretKey.secret)
  })

  it('accepts a key file that ends in a newline', () => {
    assert.deepEqual(parsePublicKey(NIX_PUBLIC + '\n'), parsePublicKey(NIX_PUBLIC))
  })

  const secret = formatSecretKey(secretKeyFromSeed('k', new Uint8Array(32).fill(7)))
  const wrongHalf = Buffer.from(secret.slice(2), 'base64')
  wrongHalf[40] = (wrongHalf[40] ?? 0) ^ 1
  const badKeys: Array<[string, (t: string) => unknown, string, RegExp]> = [
    ['no colon', parseSecretKey, 'abc', /not of the form 'name:base64'/],
    ['an empty name', parseSecretKey, ':' + secret.slice(2), /key name is empty/],
    ['a name with a space', parsePublicKey, 'a b:' + NIX_PUBLIC.slice(7), /contains " "/],
    ['nothing after the colon', parsePublicKey, 'k:', /no key material/],
    ['bad base64', parsePublicKey, 'k:not base64!', /not valid base64/],
    ['a public key given as secret', parseSecretKey, NIX_PUBLIC, /has 32 bytes, expected 64 \(this looks like a public key\)/],
    ['a secret key given as public', parsePublicKey, secret, /has 64 bytes, expected 32 \(this looks like a secret key\)/],
    ['a secret whose public half does not match', parseSecretKey, 'k:' + wrongHalf.toString('base64'), /public half does not match/]
  ]
  for (const [what, parse, text, message] of badKeys) {
    it(`refuses ${what}`, () => {
      assert.throws(() => parse(text), (err: unknown) => {
        assert.ok(err instanceof KeyFormatError)
        assert.equal(err.name, 'KeyFormatError')
        assert.match(err.message, message)
        return true
      })
    })
  }
})

describe('signatures', () => {
  const nixKey = parsePublicKey(NIX_PUBLIC)
  const info = parseNarinfo(TOP)

  it('computes Nix\'s fingerprint: full reference paths, NarHash in nix32 whatever form it came in', () => {
    assert.equal(fingerprint(info), TOP_FINGERPRINT)
    const base16 = parseNarinfo(TOP.replace(/^NarHash: .*$/m, `NarHash: ${info.narHash.toBase16()}`))
    assert.equal(fingerprint(base16), TOP_FINGERPRINT)
    const refs = ['vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top', '1an0wjmmnkdpssynpji7civ9n4hlp17q-dep', '0000000000000000000000000000000z-a']
    assert.equal(fingerprint({ ...info, references: refs }).split(';')[4],
      '/nix/store/0000000000000000000000000000000z-a,/nix/store/1an0wjmmnkdpssynpji7civ9n4hlp17q-dep,' +
      '/nix/store/vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top')
    assert.throws(() => fingerprint({ ...info, narSize: 0 }), FingerprintError)
  })

  it('verifies a signature real Nix made', () => {
    assert.ok(verifyDetached(TOP_FINGERPRINT, NIX_SIG, [nixKey]))
    assert.deepEqual(verifyNarinfo(info, [nixKey]), { ok: true, keyName: 'test-1', sig: NIX_SIG })
  })

  const tampered: Array<[string, Partial<NarInfo>]> = [
    ['a changed NarHash', { narHash: Hash.of('sha256', 'other') }],
    ['a changed NarSize', { narSize: 161 }],
    ['a dropped reference', { references: [] }],
    ['an added reference', { references: ['1an0wjmmnkdpssynpji7civ9n4hlp17q-dep', '0000000000000000000000000000000z-a'] }],
    ['another store path', { storePath: '/nix/store/0000000000000000000000000000000z-top' }]
  ]
  for (const [what, change] of tampered) {
    it(`refuses a narinfo with ${what}`, () => {
      const result = verifyNarinfo({ ...info, ...change }, [nixKey])
      assert.equal(result.ok, false)
      if (!result.ok) {
        assert.equal(result.checks[0]?.problem, 'invalid')
        assert.match(result.reason, /test-1: signature does not match/)
      }
    })
  }

  it('says why no signature verified: untrusted key, malformed, none at all', () => {
    const other = generateKeyPair('test-1').publicKey // same name, different key
    assert.equal(checkDetached(TOP_FINGERPRINT, NIX_SIG, [other]).ok, false)
    const cases: Array<[string[], PublicKey[], string[]]> = [
      [[NIX_SIG], [parsePublicKey('someone-else:' + NIX_PUBLIC.slice(7))], ['untrusted-key']],
      [['nocolon', 'test-1:AAAA', `test-1:${Buffer.alloc(63).toString('base64')}`], [nixKey], ['malformed', 'malformed', 'malformed']],
      [[NIX_SIG], [other], ['invalid']]
    ]
    for (const [sigs, trusted, problems] of cases) {
      const result = verifyNarinfo({ ...info, sigs }, trusted)
      assert.equal(result.ok, false)
      if (!result.ok) assert.deepEqual(result.checks.map(c => c.problem), problems)
    }
    const none = verifyNarinfo({ ...info, sigs: [] }, [nixKey])
    assert.equal(none.ok, false)
    if (!none.ok) assert.match(none.reason, /has no signatures/)
  })

  it('signs deterministically, adds a Sig line and finds the trusted one among several', () => {
    const a = generateKeyPair('a-1').secretKey
    const b = generateKeyPair('b-1').secretKey
    const signed = signNarinfo(signNarinfo({ ...info, sigs: [] }, a), b)
    assert.equal(signed.sigs.length, 2)
    assert.equal(signDetached(TOP_FINGERPRINT, a), signDetached(TOP_FINGERPRINT, a))
    assert.deepEqual(signNarinfo(signed, a).sigs, signed.sigs) // signing twice adds nothing
    const result = verifyNarinfo(signed, [publicKeyOf(b)])
    assert.equal(result.ok && result.keyName, 'b-1')
    assert.equal(formatNarinfo(signed).match(/^Sig: /gm)?.length, 2)
  })
})

// Real Nix on both sides: it must accept what we sign, and we must accept what it signs.
describe('signatures: against Nix 2.8', { timeout: 180_000 }, () => {
  let dir = ''
  let cleanup = async (): Promise<void> => {}
  let top = ''
  let dep = ''
  let ourSecretFile = ''
  let ourPublicFile = ''
  let ours: { secret: SecretKey, public: PublicKey }
  let nixSecretFile = ''
  let nixPublic: PublicKey
  let runs = 0

  /** Runs a Nix tool with its own narinfo disk cache, so no run sees another's cached answers. */
  async function nixRun (settings: NixSettings, cmd: string, ...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
    const env = nixEnv(settings, { ...process.env, XDG_CACHE_HOME: join(dir, `xdg-${runs++}`) })
    const r = await exec(cmd, args, { env, signal: AbortSignal.timeout(60_000) })
    return { code: r.code, stdout: r.stdout.toString('utf8'), stderr: r.stderr }
  }

  async function meshbuild (...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
    const r = await exec(process.execPath, [join(import.meta.dirname, '../../bin/meshbuild.js'), ...args], { signal: AbortSignal.timeout(30_000) })
    return { code: r.code, stdout: r.stdout.toString('utf8'), stderr: r.stderr }
  }

  /** What `nix path-info --json --sigs` says about a path, as the fields a fingerprint needs. */
  async function pathInfo (path: string): Promise<NarInfo> {
    const [real] = JSON.parse(await nix('nix', 'path-info', '--json', '--sigs', path)) as Array<{
      path: string, narHash: string, narSize: number, references: string[], signatures?: string[]
    }>
    assert.ok(real !== undefined)
    return {
      storePath: real.path,
      url: 'unused',
      compression: 'none',
      narHash: Hash.parse(real.narHash),
      narSize: real.narSize,
      references: real.references.map(r => r.slice('/nix/store/'.length)),
      sigs: real.signatures ?? []
    }
  }

  /** `nix copy --to file://<cache>` of the test paths; returns the cache directory. */
  async function copyToCache (name: string): Promise<string> {
    const cache = join(dir, name)
    await nix('nix', 'copy', '--to', `file://${cache}`, top)
    return cache
  }

  const narinfoFile = (cache: string, path: string): string => join(cache, `${path.slice(11, 43)}.narinfo`)

  async function signCacheEntry (cache: string, path: string, key: SecretKey): Promise<void> {
    const file = narinfoFile(cache, path)
    await writeFile(file, formatNarinfo(signNarinfo(parseNarinfo(await readFile(file, 'utf8')), key)))
  }

  async function editNarinfo (cache: string, path: string, edit: (info: NarInfo) => NarInfo): Promise<NarInfo> {
    const file = narinfoFile(cache, path)
    const edited = edit(parseNarinfo(await readFile(file, 'utf8')))
    await writeFile(file, formatNarinfo(edited))
    return edited
  }

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-signature-'))
    const nonce = `${process.pid}-${Date.now()}`
    const depExpr = shDrv('sig-dep', `echo ${nonce} > $out`)
    const expr = `rec { dep = ${depExpr}; top = ${shDrv('sig-top', 'echo ${dep} > $out')}; }`
    const [topDrv, depDrv] = await instantiate(expr, dir, ['top', 'dep'])
    assert.ok(topDrv !== undefined && depDrv !== undefined)
    top = (await nix('nix-store', '--realise', topDrv)).trim()
    dep = (await nix('nix-store', '--realise', depDrv)).trim()

    ourSecretFile = join(dir, 'ours.sec')
    ourPublicFile = join(dir, 'ours.pub')
    const made = await meshbuild('key', 'generate', 'meshbuild-test-1', '--secret-file', ourSecretFile, '--public-file', ourPublicFile)
    assert.equal(made.code, 0, made.stderr)
    ours = { secret: await readSecretKeyFile(ourSecretFile), public: await readPublicKeyFile(ourPublicFile) }

    nixSecretFile = join(dir, 'nix.sec')
    await nix('nix-store', '--generate-binary-cache-key', 'nix-test-1', nixSecretFile, join(dir, 'nix.pub'))
    nixPublic = await readPublicKeyFile(join(dir, 'nix.pub'))
  })
  after(async () => { await cleanup() })

  it('key generate writes files exactly as nix-store --generate-binary-cache-key does', async () => {
    const made = await meshbuild('key', 'generate', 'layout-1', '--secret-file', join(dir, 'l.sec'), '--public-file', join(dir, 'l.pub'))
    assert.equal(made.code, 0, made.stderr)
    const ourSec = await readFile(join(dir, 'l.sec'), 'utf8')
    const ourPub = await readFile(join(dir, 'l.pub'), 'utf8')
    const nixSec = await readFile(nixSecretFile, 'utf8')
    const nixPub = await readFile(join(dir, 'nix.pub'), 'utf8')
    // Same shape: name, colon, base64 of 64 / 32 bytes, no newline; secret readable by owner only.
    assert.equal(ourSec.length - 'layout-1'.length, nixSec.length - 'nix-test-1'.length)
    assert.equal(ourPub.length - 'layout-1'.length, nixPub.length - 'nix-test-1'.length)
    assert.ok(!ourSec.endsWith('\n') && !nixSec.endsWith('\n'))
    assert.equal((await stat(join(dir, 'l.sec'))).mode & 0o777, 0o600)
    assert.equal((await stat(nixSecretFile)).mode & 0o777, 0o600)
    assert.equal(made.stdout, ourPub + '\n')
    // Nix reads our secret file and derives the same public key; we do likewise with Nix's.
    const converted = await exec('nix', ['key', 'convert-secret-to-public'], { input: ourSec })
    assert.equal(converted.code, 0, converted.stderr)
    assert.equal(converted.stdout.toString(), ourPub)
    const shown = await meshbuild('key', 'public', '--secret-file', nixSecretFile)
    assert.equal(shown.stdout, nixPub + '\n')
  })

  it('key generate refuses to overwrite without --force, and overwrites with it', async () => {
    const sec = join(dir, 'o.sec')
    const pub = join(dir, 'o.pub')
    assert.equal((await meshbuild('key', 'generate', 'o-1', '--secret-file', sec, '--public-file', pub)).code, 0)
    const before = await readFile(sec, 'utf8')
    const again = await meshbuild('key', 'generate', 'o-2', '--secret-file', sec, '--public-file', join(dir, 'o2.pub'))
    assert.equal(again.code, 1)
    assert.match(again.stderr, /already exists; pass --force/)
    assert.equal(await readFile(sec, 'utf8'), before)
    await assert.rejects(stat(join(dir, 'o2.pub'))) // nothing half made
    const forced = await meshbuild('key', 'generate', 'o-3', '--secret-file', sec, '--public-file', pub, '--force')
    assert.equal(forced.code, 0, forced.stderr)
    assert.match(await readFile(sec, 'utf8'), /^o-3:/)
    const bad = await meshbuild('key', 'public', '--secret-file', pub)
    assert.equal(bad.code, 1)
    assert.match(bad.stderr, /looks like a public key/)
  })

  it('Nix signs with our secret key exactly as we do (ed25519 is deterministic)', async () => {
    await nix('nix', 'store', 'sign', '--key-file', ourSecretFile, top)
    const info = await pathInfo(top)
    const expected = signDetached(fingerprint(info), ours.secret)
    assert.ok(info.sigs.includes(expected), `Nix's sigs ${info.sigs.join(' ')} include ours ${expected}`)
  })

  it('Nix verifies narinfos we signed: nix store verify and nix copy into a fresh store', async () => {
    const cache = await copyToCache('cache-ours')
    const trustOurs = { trustedPublicKeys: [formatPublicKey(ours.public)] }
    // Unsigned first: Nix must refuse, or the checks below prove nothing.
    const unsigned = await nixRun(trustOurs, 'nix', 'store', 'verify', '--store', `file://${cache}`, '--sigs-needed', '1', dep)
    assert.equal(unsigned.code, 2, unsigned.stderr)
    for (const path of [top, dep]) await signCacheEntry(cache, path, ours.secret)

    const verified = await nixRun(trustOurs, 'nix', 'store', 'verify', '--store', `file://${cache}`, '--sigs-needed', '1', top, dep)
    assert.equal(verified.code, 0, verified.stderr)
    const otherKey = { trustedPublicKeys: [formatPublicKey(nixPublic)] }
    const untrusted = await nixRun(otherKey, 'nix', 'store', 'verify', '--store', `file://${cache}`, '--sigs-needed', '1', dep)
    assert.equal(untrusted.code, 2, untrusted.stderr)

    // A fresh store (signatures required by default) takes the paths only on our signature.
    const root = join(dir, 'root-ours')
    const copied = await nixRun(trustOurs, 'nix', 'copy', '--from', `file://${cache}`, '--to', root, top)
    assert.equal(copied.code, 0, copied.stderr)
    assert.equal(await readFile(join(root, top), 'utf8'), `${dep}\n`)
    const refused = await nixRun(otherKey, 'nix', 'copy', '--from', `file://${cache}`, '--to', join(dir, 'root-other'), top)
    assert.notEqual(refused.code, 0)
    assert.match(refused.stderr, /lacks a valid signature/)
  })

  const tamperings: Array<[string, (info: NarInfo, depInfo: NarInfo) => NarInfo]> = [
    ['a changed NarHash', (info, depInfo) => ({ ...info, narHash: depInfo.narHash })],
    ['a dropped reference', info => ({ ...info, references: [] })]
  ]
  for (const [what, tamper] of tamperings) {
    it(`a narinfo we signed, then tampered with (${what}), fails both Nix and us`, async () => {
      const cache = await copyToCache(`cache-${what.replace(/\W/g, '-')}`)
      for (const path of [top, dep]) await signCacheEntry(cache, path, ours.secret)
      const depInfo = parseNarinfo(await readFile(narinfoFile(cache, dep), 'utf8'))
      const edited = await editNarinfo(cache, top, info => tamper(info, depInfo))

      const ourVerdict = verifyNarinfo(edited, [ours.public])
      assert.equal(ourVerdict.ok, false)
      if (!ourVerdict.ok) assert.equal(ourVerdict.checks[0]?.problem, 'invalid')
      // --no-contents: Nix judges the signature alone (2 = untrusted), not the NAR.
      const trustOurs = { trustedPublicKeys: [formatPublicKey(ours.public)] }
      const nixVerdict = await nixRun(trustOurs, 'nix', 'store', 'verify', '--no-contents', '--store', `file://${cache}`, '--sigs-needed', '1', top)
      assert.equal(nixVerdict.code, 2, nixVerdict.stderr)
      assert.match(nixVerdict.stderr, /is untrusted/)
    })
  }

  it('we verify signatures real Nix made, from nix path-info and from a cache it wrote', async () => {
    await nix('nix', 'store', 'sign', '--key-file', nixSecretFile, top)
    const info = await pathInfo(top)
    const nixSig = info.sigs.find(s => s.startsWith('nix-test-1:'))
    assert.ok(nixSig !== undefined)
    assert.deepEqual(verifyNarinfo({ ...info, sigs: [nixSig] }, [nixPublic]), { ok: true, keyName: 'nix-test-1', sig: nixSig })

    const cache = await copyToCache('cache-nix')
    const fromCache = parseNarinfo(await readFile(narinfoFile(cache, top), 'utf8'))
    assert.ok(fromCache.sigs.includes(nixSig))
    const verdict = verifyNarinfo(fromCache, [nixPublic])
    assert.equal(verdict.ok && verdict.keyName, 'nix-test-1')
    // Tampered, it fails ours; and Nix agrees about the same file.
    const depInfo = await pathInfo(dep)
    const edited = await editNarinfo(cache, top, i => ({ ...i, narHash: depInfo.narHash }))
    assert.equal(verifyNarinfo(edited, [nixPublic]).ok, false)
    const nixVerdict = await nixRun({ trustedPublicKeys: [formatPublicKey(nixPublic)] }, 'nix', 'store', 'verify', '--no-contents',
      '--store', `file://${cache}`, '--sigs-needed', '1', top)
    assert.equal(nixVerdict.code, 2, nixVerdict.stderr)
  })
})
