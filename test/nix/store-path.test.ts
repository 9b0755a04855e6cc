import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  StorePathError, isDerivation, isStorePath, parseBaseName, parseStorePath, storeDirOf, storePathBaseName,
  storePathFromBaseName, storePathHashPart
} from '../../protocols/nix/store-path.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'

const H = 'vwkb9ziw1qmjw68j5jhc8hf1fw58vmqj'

describe('store paths', () => {
  it('splits a store path into its parts', () => {
    assert.deepEqual(parseStorePath(`/nix/store/${H}-hello-2.12.1`), {
      storeDir: '/nix/store', baseName: `${H}-hello-2.12.1`, hashPart: H, name: 'hello-2.12.1'
    })
    assert.equal(storePathBaseName(`/nix/store/${H}-x`), `${H}-x`)
    assert.equal(storePathHashPart(`/nix/store/${H}-x`), H)
    assert.equal(storePathHashPart(`${H}-x`), H)
    assert.equal(storePathFromBaseName(`${H}-x`), `/nix/store/${H}-x`)
    assert.equal(storeDirOf(`/other/store/${H}-x`), '/other/store')
    assert.equal(parseStorePath(`/other/store/${H}-x`, '/other/store').storeDir, '/other/store')
  })

  const valid = [
    `${H}-a`,
    `${H}-A+-._?=z09`, // every character Nix allows in a name
    `${H}-${'n'.repeat(211)}`, // the longest name
    `${H}--leading-dash`,
    `${H}-.hidden` // Nix 2.8 allows a leading dot, just not '.' or '..' as the first component
  ]
  for (const base of valid) {
    it(`accepts ${base.length > 60 ? base.slice(0, 60) + '…' : base}`, () => {
      assert.equal(parseBaseName(base).baseName, base)
      assert.ok(isStorePath(`/nix/store/${base}`))
    })
  }

  const invalid: Array<[string, string, RegExp]> = [
    ['an empty name', `/nix/store/${H}-`, /too short/],
    ['a short hash', `/nix/store/${H.slice(1)}-xy`, /illegal nix32 character '-' at offset 31/],
    ['no dash after the hash', `/nix/store/${H}xfoo`, /no '-' after its hash part/],
    ['a letter nix32 lacks (e)', `/nix/store/e${H.slice(1)}-x`, /illegal nix32 character 'e' at offset 0/],
    ['an upper-case hash', `/nix/store/${H.toUpperCase()}-x`, /illegal nix32 character/],
    ['a space in the name', `/nix/store/${H}-a b`, /illegal character ' ' at offset 1/],
    ['a slash in the name', `/nix/store/${H}-a/b`, /not directly in the Nix store/],
    ['a name of 212 characters', `/nix/store/${H}-${'n'.repeat(212)}`, /212 characters long/],
    ["the name '.'", `/nix/store/${H}-.`, /not allowed/],
    ["the name '..'", `/nix/store/${H}-..`, /not allowed/],
    ["a first component '..'", `/nix/store/${H}-..-x`, /not allowed/],
    ['another store directory', `/gnu/store/${H}-x`, /not directly in the Nix store/],
    ['a trailing slash', `/nix/store/${H}-x/`, /not directly in the Nix store|too short/],
    ['a doubled slash', `/nix//store/${H}-x`, /not directly in the Nix store/],
    ['a relative path', `${H}-x`, /not directly in the Nix store/],
    ['a non-ASCII name', `/nix/store/${H}-café`, /illegal character 'é'/]
  ]
  for (const [what, path, message] of invalid) {
    it(`refuses ${what}`, () => {
      assert.throws(() => parseStorePath(path), (err: unknown) => {
        assert.ok(err instanceof StorePathError)
        assert.equal(err.name, 'StorePathError')
        assert.match(err.message, message)
        return true
      })
      assert.equal(isStorePath(path), false)
    })
  }

  it('tells derivations by their .drv name', () => {
    const cases: Array<[string, boolean]> = [
      [`/nix/store/${H}-hello.drv`, true],
      [`${H}-hello.drv`, true],
      [`/nix/store/${H}-hello`, false],
      [`/nix/store/${H}-hello.drv.out`, false],
      [`/nix/store/${H}-.drv`, true],
      ['/tmp/hello.drv', false]
    ]
    for (const [path, expected] of cases) assert.equal(isDerivation(path), expected, path)
  })

  it('accepts the paths real Nix makes: a build output, its .drv and an added file', { timeout: 60_000 }, async () => {
    const { dir, cleanup } = await tempDir('meshbuild-storepath-')
    try {
      const [drv] = await instantiate(shDrv('store-path-test', `echo ${process.pid}-${Date.now()} > $out`), dir)
      assert.ok(drv !== undefined)
      const out = (await nix('nix-store', '--realise', drv)).trim()
      const file = join(dir, 'a+b_c?d=e.txt')
      await writeFile(file, `${Date.now()}\n`)
      const added = (await nix('nix-store', '--add', file)).trim()
      assert.ok(isDerivation(drv))
      assert.equal(parseStorePath(drv).name, 'store-path-test.drv')
      assert.equal(isDerivation(out), false)
      assert.equal(parseStorePath(out).name, 'store-path-test')
      assert.equal(parseStorePath(added).name, 'a+b_c?d=e.txt')
      // The hash part is what Nix itself reports as the path's hash part.
      assert.equal(storePathHashPart(out), out.slice('/nix/store/'.length, '/nix/store/'.length + 32))
    } finally {
      await cleanup()
    }
  })
})
