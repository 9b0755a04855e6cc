import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Hash } from '../../protocols/nix/hash.ts'
import { type NarInfo, NarinfoFormatError, formatNarinfo, parseNarinfo } from '../../protocols/nix/narinfo.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'
import { nixTopNarinfo } from '../helpers/narinfo-fixtures.ts'

// Written by `nix copy --to file://...` (Nix 2.8) on this machine, after `nix store sign`.
const TOP = nixTopNarinfo('test-1:920iT2R5KvghScEJqy452sHFaLTXp+O1a8uvZGEObZYtFRwSOd1UDOteGomsiT9nxr5JO2/OnUwe3o3SgxH1Cg==')
// No references: Nix still writes `References: ` with its trailing space.
const DEP = `StorePath: /nix/store/1an0wjmmnkdpssynpji7civ9n4hlp17q-dep
URL: nar/12k6j8cwpsl2kj3qw8wk8h5sp1wiklrmxzpkinq2y3hkgc9iv1f9.nar.xz
Compression: xz
FileHash: sha256:12k6j8cwpsl2kj3qw8wk8h5sp1wiklrmxzpkinq2y3hkgc9iv1f9
FileSize: 128
NarHash: sha256:0sm14s86j966z8zf1m4z0x56xb5y2n8w9x9123p1a63qr76aszy2
NarSize: 120
References: 
Deriver: lkx4dcic0rlr8lzq0k604k23r5ndv350-dep.drv
`
// `nix-store --add`, copied with `?compression=none`: content-addressed, no Deriver.
const ADDED = `StorePath: /nix/store/qiwmmmgnk4xmy6mma2man57iwykzv7rg-f.txt
URL: nar/1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h.nar
Compression: none
FileHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
FileSize: 120
NarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
NarSize: 120
References: 
CA: fixed:r:sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h
`
const SIG_A = 'a-1:' + Buffer.alloc(64, 1).toString('base64')
const SIG_B = 'b-1:' + Buffer.alloc(64, 2).toString('base64')
// Several signatures and a self-reference (references sorted as Nix sorts them).
const MULTI = TOP
  .replace('References: 1an0wjmmnkdpssynpji7civ9n4hlp17q-dep', 'References: 1an0wjmmnkdpssynpji7civ9n4hlp17q-dep vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top')
  .replace(/^Sig: .*\n/m, `Sig: ${SIG_A}\nSig: ${SIG_B}\nSig: test-1:920iT2R5KvghScEJqy452sHFaLTXp+O1a8uvZGEObZYtFRwSOd1UDOteGomsiT9nxr5JO2/OnUwe3o3SgxH1Cg==\n`)

/** TOP with line `n` (1-based) replaced by `text` (or removed when text is null). */
function editLine (n: number, text: string | null, base = TOP): string {
  const lines = base.split('\n')
  if (text === null) lines.splice(n - 1, 1)
  else lines[n - 1] = text
  return lines.join('\n')
}

describe('narinfo: parse and format', () => {
  const roundTrips: Array<[string, string]> = [
    ['built output with a reference, deriver and signature', TOP],
    ['output without references', DEP],
    ['content-addressed path, uncompressed', ADDED],
    ['several Sig lines and a self-reference', MULTI]
  ]
  for (const [what, text] of roundTrips) {
    it(`round-trips byte for byte: ${what}`, () => {
      assert.equal(formatNarinfo(parseNarinfo(text)), text)
    })
  }

  it('reads every field', () => {
    const info = parseNarinfo(TOP)
    const expected: NarInfo = {
      storePath: '/nix/store/vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top',
      url: 'nar/080av70zarbxwk4scsn6i71jadm5hcazr7xdm8ibi58cqjsq693a.nar.xz',
      compression: 'xz',
      fileHash: Hash.parse('sha256:080av70zarbxwk4scsn6i71jadm5hcazr7xdm8ibi58cqjsq693a'),
      fileSize: 168,
      narHash: Hash.parse('sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca'),
      narSize: 160,
      references: ['1an0wjmmnkdpssynpji7civ9n4hlp17q-dep'],
      deriver: '7703xdxskkdjf5iszqhzc3f2h29w9r85-top.drv',
      sigs: ['test-1:920iT2R5KvghScEJqy452sHFaLTXp+O1a8uvZGEObZYtFRwSOd1UDOteGomsiT9nxr5JO2/OnUwe3o3SgxH1Cg==']
    }
    assert.deepEqual(info, expected)
    assert.deepEqual(parseNarinfo(MULTI).sigs.length, 3)
    assert.equal(parseNarinfo(ADDED).ca, 'fixed:r:sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h')
    assert.deepEqual(parseNarinfo(DEP).references, [])
  })

  it('takes a missing Compression to mean bzip2, and writes it out', () => {
    const info = parseNarinfo(editLine(3, null))
    assert.equal(info.compression, 'bzip2')
    assert.equal(formatNarinfo(info), editLine(3, 'Compression: bzip2'))
  })

  it("takes 'Deriver: unknown-deriver' to mean none, and then writes no Deriver line", () => {
    const info = parseNarinfo(editLine(9, 'Deriver: unknown-deriver'))
    assert.equal(info.deriver, undefined)
    assert.equal(formatNarinfo(info), editLine(9, null))
  })

  it('accepts hashes in base16 and SRI form and writes them in nix32', () => {
    const nar = Hash.parse('sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca')
    for (const form of [nar.toBase16(), nar.toSri()]) {
      assert.equal(formatNarinfo(parseNarinfo(editLine(6, `NarHash: ${form}`))), TOP)
    }
  })

  it('writes fields in Nix order, references and signatures sorted, whatever order they came in', () => {
    const shuffled = [
      'Sig: ' + SIG_B, 'NarSize: 160', 'Deriver: 7703xdxskkdjf5iszqhzc3f2h29w9r85-top.drv',
      'References: vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top 1an0wjmmnkdpssynpji7civ9n4hlp17q-dep',
      'Sig: test-1:920iT2R5KvghScEJqy452sHFaLTXp+O1a8uvZGEObZYtFRwSOd1UDOteGomsiT9nxr5JO2/OnUwe3o3SgxH1Cg==',
      'StorePath: /nix/store/vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top', 'Compression: xz',
      'URL: nar/080av70zarbxwk4scsn6i71jadm5hcazr7xdm8ibi58cqjsq693a.nar.xz',
      'NarHash: sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca', 'Sig: ' + SIG_A,
      'FileHash: sha256:080av70zarbxwk4scsn6i71jadm5hcazr7xdm8ibi58cqjsq693a', 'FileSize: 168'
    ].join('\n') + '\n'
    assert.equal(formatNarinfo(parseNarinfo(shuffled)), MULTI)
  })

  it('ignores fields it does not know, as Nix does (old caches carry System)', () => {
    assert.equal(formatNarinfo(parseNarinfo(TOP + 'System: x86_64-linux\n')), TOP)
  })

  const NAR_HASH = 'sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca'
  const malformed: Array<[string, string, string, number]> = [
    ['a line without a colon', editLine(3, 'Compression xz'), 'missing-colon', 3],
    ['no space after the colon', editLine(2, 'URL:nar/x.nar.xz'), 'missing-colon', 2],
    ['an empty line', editLine(5, '\nFileSize: 168'), 'missing-colon', 5],
    ['no newline at the end', TOP.slice(0, -1), 'missing-newline', 10],
    ['NarHash not a hash', editLine(6, 'NarHash: sha256:zzz'), 'bad-hash', 6],
    ['NarHash without its algorithm', editLine(6, `NarHash: ${NAR_HASH.slice(7)}`), 'bad-hash', 6],
    ['NarHash with a letter nix32 lacks', editLine(6, `NarHash: ${NAR_HASH.slice(0, -1)}e`), 'bad-hash', 6],
    ['FileHash of an unknown algorithm', editLine(4, 'FileHash: sha3:abc'), 'bad-hash', 4],
    ['FileSize not a number', editLine(5, 'FileSize: 12k'), 'bad-size', 5],
    ['NarSize negative', editLine(7, 'NarSize: -1'), 'bad-size', 7],
    ['NarSize empty', editLine(7, 'NarSize: '), 'bad-size', 7],
    ['NarSize 0', editLine(7, 'NarSize: 0'), 'zero-nar-size', 7],
    ['StorePath too short', editLine(1, 'StorePath: /nix/store/abc-top'), 'bad-store-path', 1],
    ['StorePath outside the store', editLine(1, 'StorePath: /tmp/vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-top'), 'bad-store-path', 1],
    ['StorePath with a bad name', editLine(1, 'StorePath: /nix/store/vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj-to p'), 'bad-store-path', 1],
    ['a full path in References', editLine(8, 'References: /nix/store/1an0wjmmnkdpssynpji7civ9n4hlp17q-dep'), 'bad-store-path', 8],
    ['a bad Deriver', editLine(9, 'Deriver: top.drv'), 'bad-store-path', 9],
    ['NarSize twice', TOP + 'NarSize: 160\n', 'duplicate-field', 11],
    ['References twice', TOP + 'References: \n', 'duplicate-field', 11],
    ['an empty Sig', TOP + 'Sig: \n', 'bad-sig', 11],
    ['a CA of unknown kind', TOP + 'CA: foo:sha256:abc\n', 'bad-ca', 11],
    ['a CA with a bad hash', TOP + 'CA: fixed:r:sha256:abc\n', 'bad-ca', 11],
    ['no StorePath', editLine(1, null), 'missing-field', 0],
    ['no URL', editLine(2, null), 'missing-field', 0],
    ['no NarHash', editLine(6, null), 'missing-field', 0],
    ['no NarSize', editLine(7, null), 'missing-field', 0],
    ['an empty file', '', 'missing-field', 0]
  ]
  for (const [what, text, problem, line] of malformed) {
    it(`refuses ${what} (${problem}, line ${line})`, () => {
      assert.throws(() => parseNarinfo(text, { source: 'x.narinfo' }), (err: unknown) => {
        assert.ok(err instanceof NarinfoFormatError)
        assert.equal(err.name, 'NarinfoFormatError')
        assert.equal(err.problem, problem)
        assert.equal(err.line, line)
        assert.match(err.message, line > 0 ? new RegExp(`^narinfo x\\.narinfo: line ${line}: `) : /^narinfo x\.narinfo: /)
        return true
      })
    })
  }
})

// What real Nix writes into a file:// binary cache: every narinfo must come back byte for byte,
// and carry what `nix path-info --json` says about the path.
describe('narinfo: against Nix 2.8 binary caches', { timeout: 120_000 }, () => {
  let dir = ''
  let cleanup = async (): Promise<void> => {}
  const paths: string[] = []

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-narinfo-'))
    const nonce = `${process.pid}-${Date.now()}`
    const dep = shDrv('narinfo-dep', `echo ${nonce} > $out`)
    const expr = `rec { dep = ${dep}; top = ${shDrv('narinfo-top', 'echo ${dep} > $out; echo $out >> $out')}; }`
    const [topDrv] = await instantiate(expr, dir, ['top'])
    assert.ok(topDrv !== undefined)
    const top = (await nix('nix-store', '--realise', topDrv)).trim()
    const file = join(dir, 'added.txt')
    await writeFile(file, `added ${nonce}\n`)
    const added = (await nix('nix-store', '--add', file)).trim()
    // Two signatures on the top output, so its narinfo has two Sig lines.
    for (const name of ['narinfo-test-a', 'narinfo-test-b']) {
      await nix('nix-store', '--generate-binary-cache-key', name, join(dir, `${name}.sec`), join(dir, `${name}.pub`))
      await nix('nix', 'store', 'sign', '--key-file', join(dir, `${name}.sec`), top)
    }
    paths.push(top, added)
  })
  after(async () => { await cleanup() })

  for (const compression of ['xz', 'none', 'bzip2']) {
    it(`parses and rewrites byte for byte what nix copy writes (compression=${compression})`, async () => {
      const cache = join(dir, `cache-${compression}`)
      await nix('nix', 'copy', '--to', `file://${cache}?compression=${compression}`, ...paths)
      const names = (await readdir(cache)).filter(n => n.endsWith('.narinfo'))
      assert.equal(names.length, 3) // top, its dependency, the added file
      const infos = JSON.parse(await nix('nix', 'path-info', '--json', '--sigs', '--recursive', ...paths)) as Array<{
        path: string, narHash: string, narSize: number, references: string[], deriver?: string, signatures?: string[], ca?: string
      }>
      for (const name of names) {
        const text = await readFile(join(cache, name), 'utf8')
        const info = parseNarinfo(text, { source: name })
        assert.equal(formatNarinfo(info), text, name)
        assert.equal(info.compression, compression)
        const real = infos.find(i => i.path === info.storePath)
        assert.ok(real !== undefined, `nix path-info knows ${info.storePath}`)
        assert.ok(info.narHash.equals(Hash.parse(real.narHash)))
        assert.equal(info.narSize, real.narSize)
        assert.deepEqual(info.references, real.references.map(r => r.slice('/nix/store/'.length)).sort())
        assert.equal(info.deriver, real.deriver?.slice('/nix/store/'.length))
        assert.deepEqual(info.sigs, (real.signatures ?? []).sort())
        assert.equal(info.ca, real.ca)
        const onDisk = await readFile(join(cache, info.url))
        assert.equal(onDisk.length, info.fileSize)
        assert.ok(info.fileHash?.equals(Hash.of('sha256', onDisk)))
      }
      const top = parseNarinfo(await readFile(join(cache, `${paths[0]?.slice(11, 43)}.narinfo`), 'utf8'))
      assert.equal(top.sigs.length, 2)
      assert.equal(top.references.length, 2) // its dependency and itself
    })
  }
})
