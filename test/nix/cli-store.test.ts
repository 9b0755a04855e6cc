// CliStore against the real Nix on this machine: a small DAG of real derivations, real builds
// and failures, NARs exported with nix-store --dump and imported back with nix-store --import.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { Hash } from '../../protocols/nix/hash.ts'
import { CliStore } from '../../node/nix/cli-store.ts'
import { exec } from '../../node/nix/exec.ts'
import { exportTrailer } from '../../node/nix/nix-export-format.ts'
import {
  BuildFailure, buildFailureFor, BuildTimedOut, NarHashMismatch, PermanentBuildFailure, type ImportInfo, type NarEntry
} from '../../node/nix/store-backend.ts'
import { instantiate, nix, shDrv, tempDir } from '../helpers/nix.ts'

const TEST_TIMEOUT = 60_000
const tag = randomBytes(6).toString('hex')
const store = new CliStore()

// a ← b ← c (two outputs); d uses an input source; big is 4 MiB; tree is a directory with a
// symlink, an executable and names that look like NAR structure; the rest fail on purpose.
const expr = `let
  src = builtins.toFile "src-${tag}" "source ${tag}";
  a = ${shDrv(`a-${tag}`, `echo a-${tag} > $out`)};
  b = ${shDrv(`b-${tag}`, `echo \${a} > $out`)};
  c = ${shDrv(`c-${tag}`, `echo \${b} > $out; echo dev-${tag} > $dev`, 'outputs = [ "out" "dev" ];')};
  d = ${shDrv(`d-${tag}`, `/bin/cat \${src} > $out`)};
  big = ${shDrv(`big-${tag}`, '/bin/head -c 4194304 /dev/zero > $out')};
  tree = ${shDrv(`tree-${tag}`, [
    '/bin/mkdir -p $out/sub',
    `echo tree-${tag} > $out/sub/file`,
    'echo ")" > "$out/("; echo "(" > $out/contents; echo name > $out/name',
    'echo "#!/bin/sh" > $out/run; /bin/chmod +x $out/run',
    '/bin/ln -s ${a} $out/link'
  ].join('; '))};
  fail = ${shDrv(`fail-${tag}`, `echo about-to-fail-${tag}; echo oops-${tag} >&2; exit 1`)};
  slow = ${shDrv(`slow-${tag}`, `echo slow-${tag}; /bin/sleep 10; echo > $out`)};
  silent = ${shDrv(`silent-${tag}`, `echo silent-${tag}; /bin/sleep 10; echo > $out`)};
in { inherit a b c d big tree fail slow silent; }`

const ATTRS = ['a', 'b', 'c', 'd', 'big', 'tree', 'fail', 'slow', 'silent'] as const
type Attr = typeof ATTRS[number]

let drv: Record<Attr, string>
let cleanup: () => Promise<void>

async function outputsOf (drvPath: string): Promise<Record<string, string>> {
  const json = JSON.parse(await nix('nix', 'show-derivation', drvPath)) as Record<string, { outputs: Record<string, { path: string }> }>
  return Object.fromEntries(Object.entries(json[drvPath]?.outputs ?? {}).map(([k, v]) => [k, v.path]))
}

async function dump (path: string): Promise<Buffer> {
  const r = await exec('nix-store', ['--dump', path])
  assert.equal(r.code, 0, r.stderr)
  return r.stdout
}

async function * chunks (bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size)
}

before(async () => {
  const t = await tempDir()
  cleanup = t.cleanup
  const paths = await instantiate(expr, t.dir, [...ATTRS])
  drv = Object.fromEntries(ATTRS.map((a, i) => [a, paths[i] ?? ''])) as Record<Attr, string>
})

after(async () => { await cleanup() })

describe('CliStore queries', { timeout: TEST_TIMEOUT }, () => {
  let out: Record<'a' | 'b' | 'cOut' | 'cDev' | 'd', string>
  before(async () => {
    const c = await store.realise(drv.c)
    const d = await store.realise(drv.d)
    out = {
      a: (await outputsOf(drv.a)).out ?? '',
      b: (await outputsOf(drv.b)).out ?? '',
      cOut: c.outputs.out ?? '',
      cDev: c.outputs.dev ?? '',
      d: d.outputs.out ?? ''
    }
  })

  it('isValid answers for many paths at once', async () => {
    const missing = `/nix/store/${'0'.repeat(32)}-missing-${tag}`
    const notBuilt = (await outputsOf(drv.fail)).out ?? ''
    const valid = await store.isValid([out.a, out.b, out.cOut, drv.c, missing, notBuilt])
    assert.deepEqual([...valid].sort(), [out.a, out.b, out.cOut, drv.c].sort())
    await assert.rejects(store.isValid(['/tmp/not-a-store-path']), { name: 'InvalidStorePath' })
  })

  it('queryPathInfo matches what nix-store reports', async () => {
    const info = await store.queryPathInfo(out.b)
    assert.ok(info != null)
    assert.ok(info.narHash.equals(Hash.parse((await nix('nix-store', '--query', '--hash', out.b)).trim())))
    assert.equal(info.narSize, Number((await nix('nix-store', '--query', '--size', out.b)).trim()))
    assert.deepEqual(info.references, [out.a])
    assert.equal(info.deriver, drv.b)
    assert.deepEqual(info.signatures, [])
    assert.equal(await store.queryPathInfo(`/nix/store/${'1'.repeat(32)}-missing-${tag}`), null)
  })

  it('queryPathInfos takes derivations and outputs in one batch without building anything', async () => {
    const unbuilt = await outputsOf(drv.fail)
    const infos = await store.queryPathInfos([out.a, out.cOut, drv.c, drv.fail, unbuilt.out ?? ''])
    assert.deepEqual([...infos.keys()].sort(), [out.a, out.cOut, drv.c, drv.fail].sort())
    const c = infos.get(drv.c)
    assert.ok(c != null)
    assert.deepEqual(c.references, [drv.b].sort())
    assert.match(c.ca ?? '', /^text:sha256:/) // a .drv is a text-hashed path
    assert.deepEqual(infos.get(out.cOut)?.references, [out.b])
    // Asking about the failing derivation must not have built it.
    assert.equal((await store.isValid([unbuilt.out ?? ''])).size, 0)
  })

  it('closure lists references before the paths that need them', async () => {
    const closure = await store.closure([out.cOut])
    assert.deepEqual([...closure].sort(), [out.a, out.b, out.cOut].sort())
    assert.ok(closure.indexOf(out.a) < closure.indexOf(out.b))
    assert.ok(closure.indexOf(out.b) < closure.indexOf(out.cOut))
    await assert.rejects(store.closure([`/nix/store/${'2'.repeat(32)}-missing-${tag}`]), { name: 'PathNotValid' })
  })
})

describe('CliStore.realise', { timeout: TEST_TIMEOUT }, () => {
  it('returns every output by name', async () => {
    const lines: string[] = []
    const { outputs } = await store.realise(drv.c, { onLog: l => lines.push(l) })
    assert.deepEqual(Object.keys(outputs).sort(), ['dev', 'out'])
    assert.deepEqual(outputs, await outputsOf(drv.c))
    assert.equal((await readFile(outputs.dev ?? '', 'utf8')).trim(), `dev-${tag}`)
    assert.ok(!lines.some(l => l.includes('--add-root')), 'the add-root warning is filtered')
  })

  it('a builder that exits 1 is a permanent failure with its log tail', async () => {
    const lines: string[] = []
    const err = await store.realise(drv.fail, { onLog: l => lines.push(l) }).then(() => null, (e: unknown) => e)
    assert.ok(err instanceof PermanentBuildFailure, String(err))
    assert.equal(err.name, 'PermanentBuildFailure')
    assert.equal(err.exitCode, 100)
    assert.equal(err.permanent, true)
    assert.ok(err.logTail.includes(`about-to-fail-${tag}`), err.logTail.join('\n'))
    assert.ok(err.logTail.includes(`oops-${tag}`))
    assert.ok(lines.includes(`oops-${tag}`), 'onLog saw the line as it came')
  })

  for (const [what, options] of [['timeout', { timeout: 1 }], ['maxSilentTime', { maxSilentTime: 1 }]] as const) {
    it(`a builder that runs past ${what} fails as timed out`, async () => {
      const started = Date.now()
      const err = await store.realise(what === 'timeout' ? drv.slow : drv.silent, options).then(() => null, (e: unknown) => e)
      assert.ok(err instanceof BuildTimedOut, String(err))
      assert.equal(err.exitCode, 101)
      assert.equal(err.kind, 'timed-out')
      assert.equal(err.permanent, true)
      assert.ok(Date.now() - started < 8_000, 'Nix stopped the builder before it finished sleeping')
    })
  }

  it('stops the build when its signal aborts', async () => {
    const started = Date.now()
    await assert.rejects(store.realise(drv.slow, { signal: AbortSignal.timeout(300) }), { name: 'AbortError' })
    assert.ok(Date.now() - started < 5_000)
  })

  it('an unknown derivation is PathNotValid, not a build failure', async () => {
    await assert.rejects(store.realise(`/nix/store/${'3'.repeat(32)}-missing-${tag}.drv`), { name: 'PathNotValid' })
  })

  it('maps every Nix exit code to its failure class', () => {
    const cases: Array<[number, string]> = [
      [100, 'PermanentBuildFailure'], [101, 'BuildTimedOut'], [102, 'OutputHashMismatch'],
      [103, 'OutputHashMismatch'], [104, 'NotDeterministic'], [105, 'NotDeterministic'],
      [1, 'TransientBuildFailure'], [128, 'TransientBuildFailure'], [96, 'TransientBuildFailure']
    ]
    for (const [code, name] of cases) {
      const err = buildFailureFor('/nix/store/x.drv', code, [])
      assert.equal(err.name, name, `exit ${code}`)
      assert.ok(err instanceof BuildFailure)
    }
  })
})

describe('CliStore NAR export and import', { timeout: TEST_TIMEOUT }, () => {
  it('exportNar streams exactly what nix-store --dump gives', async () => {
    const { outputs } = await store.realise(drv.tree)
    const path = outputs.out ?? ''
    const parts: Uint8Array[] = []
    for await (const c of store.exportNar(path)) parts.push(c)
    assert.ok(Buffer.concat(parts).equals(await dump(path)))
    await assert.rejects(async () => {
      for await (const c of store.exportNar(`/nix/store/${'4'.repeat(32)}-missing-${tag}`)) void c
    }, { name: 'PathNotValid' })
  })

  it('exportNar stops nix-store when the consumer stops early', async () => {
    const { outputs } = await store.realise(drv.big)
    const path = outputs.out ?? ''
    let got = 0
    for await (const c of store.exportNar(path)) { got += c.length; break }
    assert.ok(got > 0 && got < 4 * 1024 * 1024)
    const deadline = Date.now() + 5_000
    let running = true
    while (running && Date.now() < deadline) {
      const r = await promisify(execFile)('pgrep', ['-f', `nix-store --dump ${path}`]).then(() => true, () => false)
      running = r
      if (running) await new Promise(resolve => setTimeout(resolve, 50))
    }
    assert.equal(running, false, 'nix-store --dump is gone')
  })

  it('importNars brings a deleted path back only when its NAR matches', async (t) => {
    async function * one (path: string, nar: AsyncIterable<Uint8Array>): AsyncGenerator<NarEntry> { yield { path, nar } }
    const { outputs } = await store.realise(drv.tree)
    const path = outputs.out ?? ''
    const a = (await outputsOf(drv.a)).out ?? ''
    const before = await store.queryPathInfo(path)
    assert.ok(before != null)
    assert.deepEqual(before.references, [a])
    const nar = await dump(path)
    const info: ImportInfo = { path, narHash: before.narHash, narSize: before.narSize, references: before.references, deriver: drv.tree }
    await nix('nix-store', '--delete', path)
    assert.equal((await store.isValid([path])).size, 0)

    const flipped = Buffer.from(nar)
    const at = flipped.indexOf(`tree-${tag}`)
    assert.ok(at > 0)
    flipped[at] = (flipped[at] ?? 0) ^ 0x01
    const rejected: Array<[string, Uint8Array, Partial<ImportInfo>, string]> = [
      ['a flipped byte', flipped, {}, 'NarHashMismatch'],
      ['a NAR cut short', nar.subarray(0, nar.length - 8), {}, 'NarHashMismatch'],
      ['a NAR longer than announced', nar, { narSize: nar.length - 8 }, 'NarHashMismatch'],
      ['bytes after the NAR', Buffer.concat([nar, Buffer.alloc(8)]), {}, 'NarHashMismatch'],
      // A sender that announces NAR + trailer as "the NAR" must not get Nix to register anything.
      ...((): Array<[string, Uint8Array, Partial<ImportInfo>, string]> => {
        const smuggled = Buffer.concat([nar, exportTrailer({ path, references: [] })])
        return [['a trailer smuggled inside the NAR', smuggled, { narSize: smuggled.length, narHash: Hash.of('sha256', smuggled) }, 'NarFormatError']]
      })()
    ]
    for (const [what, bytes, override, name] of rejected) {
      await t.test(`rejects ${what}`, async () => {
        const err = await store.importNars([{ ...info, ...override }], one(path, chunks(bytes, 100))).then(() => null, (e: unknown) => e)
        assert.ok(err instanceof Error, `${what} was accepted`)
        assert.equal(err.name, name, err.message)
        if (err instanceof NarHashMismatch) {
          assert.equal(err.path, path)
          assert.match(err.message, new RegExp(path))
        }
        assert.equal((await store.isValid([path])).size, 0, 'the path stays invalid')
      })
    }

    await t.test('imports the real NAR, fed in odd-sized chunks', async () => {
      assert.deepEqual(await store.importNars([info], one(path, chunks(nar, 7))), { imported: [path] })
      assert.equal((await store.isValid([path])).size, 1)
      const r = await exec('nix-store', ['--verify-path', path])
      assert.equal(r.code, 0, r.stderr)
      const after = await store.queryPathInfo(path)
      assert.ok(after?.narHash.equals(before.narHash))
      assert.ok(Hash.parse((await nix('nix-store', '--query', '--hash', path)).trim()).equals(before.narHash))
      assert.deepEqual(after?.references, [a])
      assert.equal(after?.deriver, drv.tree)
    })
  })
})

describe('CliStore closureInfos', { timeout: TEST_TIMEOUT }, () => {
  it('describes the closure of .drv and output roots together, references first, and names the missing roots', async () => {
    const { outputs } = await store.realise(drv.c)
    const cOut = outputs.out ?? ''
    const missing = `/nix/store/${'6'.repeat(32)}-missing-${tag}`
    const { infos, missing: absent } = await store.closureInfos([drv.c, cOut, missing])
    assert.deepEqual(absent, [missing])
    const expected = (await nix('nix-store', '--query', '--requisites', drv.c, cOut)).trim().split('\n')
    assert.deepEqual(infos.map(i => i.path).sort(), [...expected].sort())
    const seen = new Set<string>()
    for (const info of infos) {
      for (const r of info.references) if (r !== info.path) assert.ok(seen.has(r), `${info.path} comes before its reference ${r}`)
      seen.add(info.path)
    }
    // The same registrations queryPathInfos gives, path by path.
    const one = await store.queryPathInfos(expected)
    for (const info of infos) assert.deepEqual(info, one.get(info.path))
  })
})

describe('CliStore batch import (importNars)', { timeout: TEST_TIMEOUT }, () => {
  // x ← y (y references x), and z on its own: built, dumped, then deleted, fresh for each case.
  async function freshBatch (): Promise<{ x: ImportInfo, y: ImportInfo, z: ImportInfo, nar: Map<string, Buffer> }> {
    const t = randomBytes(6).toString('hex')
    const dir = await tempDir()
    try {
      const [dx, dy, dz] = await instantiate(`let x = ${shDrv(`bx-${t}`, `echo x-${t} > $out`)}; in {
        inherit x; y = ${shDrv(`by-${t}`, `echo \${x} > $out`)}; z = ${shDrv(`bz-${t}`, `echo z-${t} > $out`)}; }`, dir.dir, ['x', 'y', 'z'])
      // One after the other: a nix-store that finds x locked by another waits 5 s (Nix's poll interval).
      const paths: string[] = []
      for (const d of [dx, dy, dz]) paths.push((await store.realise(d ?? '')).outputs.out ?? '')
      const infos = await store.queryPathInfos(paths)
      const nar = new Map<string, Buffer>()
      for (const p of paths) nar.set(p, await dump(p))
      await nix('nix-store', '--delete', ...paths)
      assert.equal((await store.isValid(paths)).size, 0)
      const [x, y, z] = paths.map(p => {
        const i = infos.get(p)
        assert.ok(i !== undefined)
        return { path: i.path, narHash: i.narHash, narSize: i.narSize, references: i.references, ...(i.deriver !== undefined ? { deriver: i.deriver } : {}) }
      })
      assert.ok(x !== undefined && y !== undefined && z !== undefined)
      assert.deepEqual(y.references, [x.path])
      return { x, y, z, nar }
    } finally {
      await dir.cleanup()
    }
  }

  async function * entries (list: Array<[string, Uint8Array]>): AsyncGenerator<NarEntry> {
    for (const [path, bytes] of list) yield { path, nar: chunks(bytes, 64) }
  }

  async function validOf (...paths: string[]): Promise<boolean[]> {
    const valid = await store.isValid(paths)
    return paths.map(p => valid.has(p))
  }

  function flip (nar: Buffer, text: string): Buffer {
    const out = Buffer.from(nar)
    const at = out.indexOf(text)
    assert.ok(at > 0)
    out[at] = (out[at] ?? 0) ^ 0x01
    return out
  }

  it('imports a whole closure in one go, each path with its registration', async () => {
    const { x, y, z, nar } = await freshBatch()
    const get = (p: string): Buffer => nar.get(p) ?? Buffer.alloc(0)
    const r = await store.importNars([x, y, z], entries([[x.path, get(x.path)], [y.path, get(y.path)], [z.path, get(z.path)]]))
    assert.deepEqual(r.imported, [x.path, y.path, z.path])
    for (const p of [x, y, z]) {
      const rr = await exec('nix-store', ['--verify-path', p.path])
      assert.equal(rr.code, 0, rr.stderr)
      const after = await store.queryPathInfo(p.path)
      assert.ok(after?.narHash.equals(p.narHash))
      assert.deepEqual(after?.references, p.references)
      assert.equal(after?.deriver, p.deriver)
    }
  })

  // [case, how to make the batch, the error, which of x, y, z end up valid]
  type Fresh = Awaited<ReturnType<typeof freshBatch>>
  const failures: Array<[string, (f: Fresh) => [ImportInfo[], Array<[string, Uint8Array]>], string, [boolean, boolean, boolean]]> = [
    ['a corrupted NAR in the middle: the paths before it are registered, it and those after are not',
      ({ x, y, z, nar }) => [[x, z, y], [[x.path, nar.get(x.path) as Buffer], [z.path, flip(nar.get(z.path) as Buffer, 'z-')], [y.path, nar.get(y.path) as Buffer]]],
      'NarHashMismatch', [true, false, false]],
    ['a trailer smuggled inside the middle NAR',
      ({ x, y, z, nar }) => {
        const smuggled = Buffer.concat([nar.get(z.path) as Buffer, exportTrailer({ path: z.path, references: [] })])
        return [[x, { ...z, narSize: smuggled.length, narHash: Hash.of('sha256', smuggled) }, y], [[x.path, nar.get(x.path) as Buffer], [z.path, smuggled], [y.path, nar.get(y.path) as Buffer]]]
      },
      'NarFormatError', [true, false, false]],
    ['a NAR cut short in the middle',
      ({ x, y, z, nar }) => [[x, z, y], [[x.path, nar.get(x.path) as Buffer], [z.path, (nar.get(z.path) as Buffer).subarray(0, 40)], [y.path, nar.get(y.path) as Buffer]]],
      'NarHashMismatch', [true, false, false]],
    ['a source that sends another path than announced',
      ({ x, y, z, nar }) => [[x, z, y], [[x.path, nar.get(x.path) as Buffer], [y.path, nar.get(y.path) as Buffer], [z.path, nar.get(z.path) as Buffer]]],
      'NarOutOfOrder', [true, false, false]],
    ['a source that ends early',
      ({ x, y, z, nar }) => [[x, z, y], [[x.path, nar.get(x.path) as Buffer]]],
      'NarOutOfOrder', [true, false, false]],
    ['a source with one NAR too many: nothing more is registered, the earlier paths are',
      ({ x, y, z, nar }) => [[x, z], [[x.path, nar.get(x.path) as Buffer], [z.path, nar.get(z.path) as Buffer], [y.path, nar.get(y.path) as Buffer]]],
      'NarOutOfOrder', [true, false, true]],
    ['a path whose reference is neither valid nor earlier in the batch (Nix refuses it)',
      ({ x, y, z, nar }) => [[z, y, x], [[z.path, nar.get(z.path) as Buffer], [y.path, nar.get(y.path) as Buffer], [x.path, nar.get(x.path) as Buffer]]],
      'PathNotValid', [false, false, true]]
  ]
  for (const [what, make, name, validAfter] of failures) {
    it(`refuses ${what}`, async () => {
      const fresh = await freshBatch()
      const [infos, list] = make(fresh)
      const err = await store.importNars(infos, entries(list)).then(() => null, (e: unknown) => e)
      assert.ok(err instanceof Error, 'the batch was accepted')
      assert.equal(err.name, name, err.message)
      assert.deepEqual(await validOf(fresh.x.path, fresh.y.path, fresh.z.path), validAfter)
      for (const [p, valid] of [[fresh.x.path, validAfter[0]], [fresh.y.path, validAfter[1]], [fresh.z.path, validAfter[2]]] as const) {
        if (valid) {
          const r = await exec('nix-store', ['--verify-path', p])
          assert.equal(r.code, 0, r.stderr)
        }
      }
    })
  }

  it('stops on abort; the paths before are registered, the one streaming is not', async () => {
    const { x, y, nar } = await freshBatch()
    const controller = new AbortController()
    async function * source (): AsyncGenerator<NarEntry> {
      yield { path: x.path, nar: chunks(nar.get(x.path) as Buffer, 64) }
      yield {
        path: y.path,
        nar: (async function * () {
          yield (nar.get(y.path) as Buffer).subarray(0, 16)
          controller.abort(new Error('enough'))
          yield (nar.get(y.path) as Buffer).subarray(16)
        })()
      }
    }
    await assert.rejects(store.importNars([x, y], source(), { signal: controller.signal }), { name: 'AbortError' })
    assert.deepEqual(await validOf(x.path, y.path), [true, false])
  })

  it('a path valid already is read and ignored by Nix, the rest imported', async () => {
    const { x, y, z, nar } = await freshBatch()
    await store.importNars([x], entries([[x.path, nar.get(x.path) as Buffer]]))
    const r = await store.importNars([x, y, z], entries([[x.path, nar.get(x.path) as Buffer], [y.path, nar.get(y.path) as Buffer], [z.path, nar.get(z.path) as Buffer]]))
    assert.deepEqual(r.imported, [x.path, y.path, z.path])
    assert.deepEqual(await validOf(x.path, y.path, z.path), [true, true, true])
  })
})
