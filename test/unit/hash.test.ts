import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { decodeNix32, encodeNix32 } from '../../protocols/nix/nix32.ts'
import { Hash, HashFormatError } from '../../protocols/nix/hash.ts'

// Reference values printed by Nix 2.8 on this machine:
//   nix hash to-base32 --type sha256 $(echo -n hello | sha256sum | cut -d' ' -f1)
const HELLO_HEX = '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824'
const HELLO_NIX32 = '094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic'

describe('nix32', () => {
  it('encodes a sha256 digest as Nix does', () => {
    assert.equal(encodeNix32(Buffer.from(HELLO_HEX, 'hex')), HELLO_NIX32)
  })
  it('round-trips digests of every common size', () => {
    for (const size of [16, 20, 32, 64]) {
      const bytes = Uint8Array.from({ length: size }, (_, i) => (i * 37 + 11) & 0xff)
      assert.deepEqual(decodeNix32(encodeNix32(bytes), size), bytes)
    }
  })
  it('rejects characters outside the alphabet, naming the offset', () => {
    const bad = 'e' + HELLO_NIX32.slice(1)
    assert.throws(() => decodeNix32(bad, 32), /invalid nix32 character 'e' at offset 0/)
  })
})

describe('Hash', () => {
  const cases: Array<[string, string]> = [
    ['nix32', `sha256:${HELLO_NIX32}`],
    ['base16', `sha256:${HELLO_HEX}`],
    ['base64', `sha256:${Buffer.from(HELLO_HEX, 'hex').toString('base64')}`],
    ['SRI', `sha256-${Buffer.from(HELLO_HEX, 'hex').toString('base64')}`]
  ]
  for (const [form, text] of cases) {
    it(`parses the ${form} form and prints nix32`, () => {
      assert.equal(Hash.parse(text).toNix32(), `sha256:${HELLO_NIX32}`)
    })
  }
  it('hashes data', () => {
    assert.equal(Hash.of('sha256', 'hello').toBase16(), `sha256:${HELLO_HEX}`)
  })
  const bad: Array<[string, RegExp]> = [
    ['sha256:xyz', /not nix32, base16 or base64/],
    ['blake3:abcd', /unknown hash algorithm 'blake3'/],
    [HELLO_HEX, /does not say its algorithm/]
  ]
  for (const [text, re] of bad) {
    it(`rejects ${text.slice(0, 20)}`, () => {
      assert.throws(() => Hash.parse(text), (e: Error) => e instanceof HashFormatError && re.test(e.message))
    })
  }
})
