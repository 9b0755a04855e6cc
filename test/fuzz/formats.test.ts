// Fuzzing the Nix format decoders with mutated real samples: the NAR decoder (sync parser with
// random chunking, and the async decodeNar), narinfo parsing, and .drv ATerm parsing. Each case
// must end with a result or the decoder's own named error, quickly, with the heap bounded.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { exec } from '../../node/nix/exec.ts'
import { decodeNar, NarParser, type NarSink } from '../../protocols/nix/nar-decoder.ts'
import { parseNarinfo } from '../../protocols/nix/narinfo.ts'
import { parseDerivation, serialiseDerivation } from '../../protocols/nix/derivation.ts'
import { nixTopNarinfo } from '../helpers/narinfo-fixtures.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'
import { fuzz, fuzzInput, SEED, type Rng } from './fuzz.ts'

let dir: string
let cleanup: () => Promise<void>
const nars: Buffer[] = []
const drvs: Buffer[] = []

const sink: NarSink = { directory: () => {}, directoryEnd: () => {}, file: () => {}, data: () => {}, fileEnd: () => {}, symlink: () => {} }

/** Cuts `b` into random chunks, as a network delivers it. */
function chunks (rng: Rng, b: Buffer): Buffer[] {
  const out: Buffer[] = []
  for (let at = 0; at < b.length;) {
    const n = 1 + rng.int(rng.int(4) === 0 ? 8 : 4096)
    out.push(b.subarray(at, at + n))
    at += n
  }
  return out
}

before(async () => {
  ({ dir, cleanup } = await tempDir('meshbuild-fuzz-formats-'))
  // Real NARs, as Nix writes them, of a small tree with every node type.
  const tree = join(dir, 'tree')
  await mkdir(join(tree, 'sub', 'deeper'), { recursive: true })
  await writeFile(join(tree, 'a.txt'), 'hello\n')
  await writeFile(join(tree, 'exe'), '#!/bin/sh\necho hi\n', { mode: 0o755 })
  await writeFile(join(tree, 'sub', 'empty'), '')
  await writeFile(join(tree, 'sub', 'deeper', 'bin'), randomBytes(3000))
  await symlink('../a.txt', join(tree, 'sub', 'link'))
  for (const p of [tree, join(tree, 'a.txt'), join(tree, 'sub'), join(tree, 'sub', 'link')]) {
    const r = await exec('nix-store', ['--dump', p])
    assert.equal(r.code, 0, r.stderr)
    nars.push(r.stdout)
  }
  // Real .drv files: one with an input derivation, one fixed-output, plus a serialised round trip.
  const tag = randomBytes(4).toString('hex')
  const paths = await instantiate(`let dep = ${shDrv(`fuzz-dep-${tag}`, 'echo dep > $out')}; in {
    top = ${shDrv(`fuzz-top-${tag}`, 'echo ${dep} > $out', 'extra = "x\\ty\\"z\\\\"; outputs = [ "out" "dev" ];')};
    fixed = ${shDrv(`fuzz-fixed-${tag}`, 'echo -n x > $out', 'outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";')};
  }`, dir, ['top', 'fixed'])
  for (const p of paths) drvs.push(await readFile(p))
  const first = drvs[0] ?? assert.fail('no drv')
  drvs.push(serialiseDerivation(parseDerivation(first)))
})

after(async () => { await cleanup?.() })

describe(`fuzzing the Nix formats (seed ${SEED})`, { timeout: 120_000 }, () => {
  it('NAR parser: mutated NARs in random chunks end in NarFormatError or a NAR', async () => {
    const r = await fuzz({
      name: 'nar-parser',
      iterations: 60000,
      input: (rng) => chunks(rng, fuzzInput(rng, nars)),
      run: (parts) => {
        const parser = new NarParser(sink, { maxTargetLength: 4096 })
        for (const p of parts) parser.push(p)
        parser.end()
      },
      allowed: ['NarFormatError'],
      show: (parts) => `${parts.length} chunks, base64 ${Buffer.concat(parts).subarray(0, 2048).toString('base64')}`
    })
    assert.ok(r.ok > 0 && (r.errors.NarFormatError ?? 0) > 0, `every case had the same outcome: ${JSON.stringify(r)}`)
  })

  it('decodeNar: the async decoder on mutated NARs', async () => {
    await fuzz({
      name: 'decode-nar',
      iterations: 10000,
      input: (rng) => chunks(rng, fuzzInput(rng, nars)),
      run: async (parts) => {
        const source = (async function * () { yield * parts })()
        for await (const _ of decodeNar(source)) {}
      },
      allowed: ['NarFormatError']
    })
  })

  it('narinfo: mutated narinfo text ends in NarinfoFormatError or a narinfo', async () => {
    const samples = [
      Buffer.from(nixTopNarinfo('cache.example.org-1:bjMt5ImeWJiyHn2S+7yhTrHbMrfOO1n1ZaTCYqVt+rMKJyxMD6S2Yt6NzIgwW5r5CHmrn9KR4YXHoFVzK4UZBA==')),
      Buffer.from('StorePath: /nix/store/1an0wjmmnkdpssynpji7civ9n4hlp17q-dep\nURL: nar/1an0wjmmnkdpssynpji7civ9n4hlp17q.nar\nCompression: none\nNarHash: sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca\nNarSize: 160\nReferences: \nCA: fixed:r:sha256:0y43n2q9vv18qa1136wviva8wkbfc0i5ph4qj9dp74fza9q4kvca\n')
    ]
    const r = await fuzz({
      name: 'narinfo',
      iterations: 60000,
      input: (rng) => fuzzInput(rng, samples).toString('utf8'),
      run: (text) => parseNarinfo(text),
      allowed: ['NarinfoFormatError']
    })
    assert.ok(r.ok > 0, `no mutated narinfo parsed: ${JSON.stringify(r)}`)
  })

  it('.drv ATerm: mutated derivations end in DerivationFormatError or a derivation', async () => {
    const r = await fuzz({
      name: 'derivation',
      iterations: 60000,
      input: (rng) => fuzzInput(rng, drvs),
      run: (bytes) => {
        const drv = parseDerivation(bytes)
        // What parses must serialise again (the node writes .drv files it received).
        serialiseDerivation(drv)
      },
      allowed: ['DerivationFormatError']
    })
    assert.ok(r.ok > 0 && (r.errors.DerivationFormatError ?? 0) > 0, JSON.stringify(r))
  })
})
