// .drv ATerm parse/serialise and `meshbuild derivation show`, pinned against what the real Nix
// writes (`nix-instantiate`) and prints (`nix show-derivation`).
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  DerivationFormatError,
  decodeBytes,
  encodeString,
  inputDrvPaths,
  isFixedOutput,
  outputKind,
  outputPaths,
  parseDerivation,
  readDerivation,
  requiredSystemFeatures,
  serialiseDerivation,
  type Derivation
} from '../../protocols/nix/derivation.ts'
import { exec } from '../../node/nix/exec.ts'
import { instantiate, tempDir } from '../helpers/nix.ts'

const MESHBUILD = fileURLToPath(new URL('../../bin/meshbuild.js', import.meta.url))
const TIMEOUT = 60_000

/** Runs the meshbuild CLI; resolves with its exit code and output bytes. */
async function meshbuild (...args: string[]): Promise<{ code: number, stdout: Buffer, stderr: string }> {
  return await exec(process.execPath, [MESHBUILD, ...args], { signal: AbortSignal.timeout(TIMEOUT) })
}

async function nixShow (...args: string[]): Promise<Buffer> {
  const r = await exec('nix', ['show-derivation', ...args], { signal: AbortSignal.timeout(TIMEOUT) })
  assert.equal(r.code, 0, r.stderr)
  return r.stdout
}

// Strings that need every escape Nix knows, and some it does not.
const TRICKY = 'say "hi" \\ back\\slash\\\nnew\tline\r\n $HOME ${x} é 日本 🎉 \u{10348}'
const TRICKY_NIX = 'say \\"hi\\" \\\\ back\\\\slash\\\\\\nnew\\tline\\r\\n \\$HOME \\${x} é 日本 🎉 \u{10348}'

const EXPR = `
let
  sys = builtins.currentSystem;
  mk = attrs: derivation ({ system = sys; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; } // attrs);
  many = builtins.listToAttrs (builtins.genList (i: { name = "VAR_\${toString i}"; value = "value \${toString i}"; }) 80);
in rec {
  multi = mk { name = "multi"; outputs = [ "out" "dev" "lib" ]; };
  flat = mk {
    name = "flat"; outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "hi";
  };
  nar = mk {
    name = "nar"; outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
  };
  top = derivation ({
    name = "top"; system = sys; builder = "/bin/sh"; args = [ ];
    src = ./src.txt;
    note = builtins.toFile "note.txt" "hello";
    deps = "\${multi.dev} \${multi} \${flat} \${nar}";
    requiredSystemFeatures = [ "kvm" "big-parallel" ];
    tricky = "${TRICKY_NIX}";
    "10" = "numeric-looking names keep byte order"; "9" = "nine"; Zed = "upper"; _under = "score";
  } // many);
  odd = mk {
    name = "odd"; builder = "/bin/sh"; args = [ "-c" "x\\"y\\\\z\\n" "" "\\t" ];
    ctl = builtins.fromJSON "\\"a\\\\u0001b\\\\u001fc\\\\u007fd\\"";
    bytes = builtins.readFile ./bytes.bin;
  };
  structured = derivation {
    name = "structured"; system = sys; builder = "/bin/sh"; __structuredAttrs = true;
    requiredSystemFeatures = [ "nixos-test" "kvm" ];
  };
  discard = mk { name = "discard"; d = builtins.unsafeDiscardOutputDependency multi.drvPath; };
  chain = mk { name = "chain"; deps = "\${top} \${discard} \${odd}"; };
}
`
const ATTRS = ['multi', 'flat', 'nar', 'top', 'odd', 'structured', 'discard', 'chain'] as const
type Attr = typeof ATTRS[number]
// Bytes that are not UTF-8: lone continuation, 0xff/0xfe, a truncated sequence, a CESU surrogate.
const BYTES = Buffer.from([0x61, 0xff, 0xfe, 0x80, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0x6f, 0x6b])

describe('derivations written by nix-instantiate', { timeout: 5 * TIMEOUT }, () => {
  let dir = ''
  let cleanup = async (): Promise<void> => {}
  const drvPath = {} as Record<Attr, string>
  const drv = {} as Record<Attr, Derivation>

  before(async () => {
    ({ dir, cleanup } = await tempDir())
    await writeFile(join(dir, 'src.txt'), 'a source file\n')
    await writeFile(join(dir, 'bytes.bin'), BYTES)
    const paths = await instantiate(EXPR, dir, [...ATTRS])
    assert.equal(paths.length, ATTRS.length)
    ATTRS.forEach((a, i) => { drvPath[a] = paths[i] ?? '' })
    for (const a of ATTRS) drv[a] = await readDerivation(drvPath[a])
  })
  after(async () => { await cleanup() })

  for (const a of ATTRS) {
    it(`${a}: parse then serialise gives the file's bytes`, async () => {
      const bytes = await readFile(drvPath[a])
      const out = serialiseDerivation(parseDerivation(bytes))
      assert.ok(out.equals(bytes), `differs:\n${out.toString('latin1')}\n${bytes.toString('latin1')}`)
    })

    for (const flags of [[], ['-r'], ['--recursive']]) {
      it(`${a}: derivation show ${flags.join(' ')} prints what nix show-derivation prints`, async () => {
        const ours = await meshbuild('derivation', 'show', ...flags, drvPath[a])
        assert.equal(ours.code, 0, ours.stderr)
        const theirs = await nixShow(...flags, drvPath[a])
        assert.deepEqual(JSON.parse(ours.stdout.toString('utf8')), JSON.parse(theirs.toString('utf8')))
        assert.equal(ours.stdout.toString('latin1'), theirs.toString('latin1')) // byte for byte
      })
    }
  }

  it('shows several derivations at once, sorted and deduplicated as Nix does', async () => {
    const args = [drvPath.chain, drvPath.flat, drvPath.multi, drvPath.flat]
    const ours = await meshbuild('derivation', 'show', ...args)
    assert.equal(ours.code, 0, ours.stderr)
    assert.equal(ours.stdout.toString('latin1'), (await nixShow(...args)).toString('latin1'))
    assert.equal(Object.keys(JSON.parse(ours.stdout.toString('utf8')) as object).length, 3)
  })

  it('-r follows input derivations and .drv input sources down the whole graph', async () => {
    const shown = Object.keys(JSON.parse((await meshbuild('derivation', 'show', '-r', drvPath.chain)).stdout.toString('utf8')) as object)
    const expected: Attr[] = ['chain', 'top', 'discard', 'odd', 'multi', 'flat', 'nar']
    assert.deepEqual(new Set(shown), new Set(expected.map(a => drvPath[a])))
  })

  it('reads input derivations with their output names, and input sources', () => {
    const top = drv.top
    assert.deepEqual(inputDrvPaths(top).sort(), [drvPath.flat, drvPath.multi, drvPath.nar].sort())
    assert.deepEqual(top.inputDrvs.get(drvPath.multi), ['dev', 'out'])
    assert.deepEqual(top.inputDrvs.get(drvPath.flat), ['out'])
    assert.equal(top.inputSrcs.length, 2)
    assert.ok(top.inputSrcs.some(p => /^\/nix\/store\/[a-z0-9]{32}-src\.txt$/.test(p)), top.inputSrcs.join(' '))
    assert.ok(top.inputSrcs.some(p => p.endsWith('-note.txt')))
    assert.equal(top.env.get('src'), top.inputSrcs.find(p => p.endsWith('-src.txt')))
    assert.deepEqual(drv.discard.inputSrcs, [drvPath.multi])
    assert.equal(drv.discard.inputDrvs.size, 0)
  })

  it('reads system, builder, an empty args list and many env vars in byte order', () => {
    const top = drv.top
    assert.equal(top.builder, '/bin/sh')
    assert.match(top.system, /^[a-z0-9_]+-[a-z]+$/)
    assert.deepEqual(top.args, [])
    assert.ok(top.env.size > 80)
    assert.equal(top.env.get('VAR_79'), 'value 79')
    const keys = [...top.env.keys()]
    assert.deepEqual(keys.slice(0, 3), ['10', '9', 'VAR_0'])
    assert.ok(keys.indexOf('Zed') < keys.indexOf('_under') && keys.indexOf('_under') < keys.indexOf('builder'))
  })

  it('unescapes quotes, backslashes, newlines, tabs, CR, $ and keeps UTF-8', () => {
    assert.equal(drv.top.env.get('tricky'), TRICKY)
    assert.deepEqual(drv.odd.args, ['-c', 'x"y\\z\n', '', '\t'])
    assert.equal(drv.odd.env.get('ctl'), 'a\u0001b\u001fc\u007fd')
  })

  it('keeps bytes that are not UTF-8, and writes them back unchanged', () => {
    const value = drv.odd.env.get('bytes') ?? ''
    assert.ok(encodeString(value).equals(BYTES))
    assert.equal(value.slice(0, 1), 'a')
    assert.equal(value.slice(-2), 'ok')
  })

  it('reads multiple outputs', () => {
    const m = drv.multi
    assert.deepEqual([...m.outputs.keys()], ['dev', 'lib', 'out'])
    const paths = outputPaths(m)
    assert.match(paths.get('dev') ?? '', /-multi-dev$/)
    assert.match(paths.get('lib') ?? '', /-multi-lib$/)
    assert.match(paths.get('out') ?? '', /-multi$/)
    assert.equal(m.env.get('outputs'), 'out dev lib')
    assert.equal(outputKind(m.outputs.get('dev') ?? { path: '', hashAlgo: '', hash: '' }), 'inputAddressed')
    assert.equal(isFixedOutput(m), false)
  })

  it('reads fixed-output derivations, flat and recursive', () => {
    const flat = drv.flat.outputs.get('out')
    assert.equal(flat?.hashAlgo, 'sha256')
    assert.equal(flat.hash, createHash('sha256').update('hi').digest('hex'))
    assert.equal(isFixedOutput(drv.flat), true)
    const nar = drv.nar.outputs.get('out')
    assert.equal(nar?.hashAlgo, 'r:sha256')
    assert.match(nar.hash, /^[0-9a-f]{64}$/)
    assert.equal(isFixedOutput(drv.nar), true)
    assert.equal(isFixedOutput(drv.top), false)
  })

  it('gives requiredSystemFeatures, also from structured attrs', () => {
    assert.deepEqual(requiredSystemFeatures(drv.top), ['kvm', 'big-parallel'])
    assert.deepEqual(requiredSystemFeatures(drv.structured), ['nixos-test', 'kvm'])
    assert.deepEqual(requiredSystemFeatures(drv.multi), [])
  })
})

describe('derivation show errors', { timeout: 2 * TIMEOUT }, () => {
  let dir = ''
  let cleanup = async (): Promise<void> => {}
  before(async () => { ({ dir, cleanup } = await tempDir()) })
  after(async () => { await cleanup() })

  it('exits 1 naming a path that does not exist', async () => {
    const missing = join(dir, 'nothing-here.drv')
    const r = await meshbuild('derivation', 'show', missing)
    assert.equal(r.code, 1)
    assert.ok(r.stderr.includes(missing), r.stderr)
    assert.equal(r.stdout.length, 0)
  })

  it('exits 1 naming a path that is not a .drv', async () => {
    const file = join(dir, 'plain.txt')
    await writeFile(file, 'text')
    const r = await meshbuild('derivation', 'show', file)
    assert.equal(r.code, 1)
    assert.ok(r.stderr.includes(file) && r.stderr.includes('.drv'), r.stderr)
  })

  it('exits 1 with the byte offset for a malformed .drv', async () => {
    const file = join(dir, 'broken.drv')
    const text = 'Derive([("out","/nix/store/x-y","","")],[],[],"x86_64-linux","/bin/sh",[],['
    await writeFile(file, text)
    const r = await meshbuild('derivation', 'show', file)
    assert.equal(r.code, 1)
    assert.ok(r.stderr.includes(file), r.stderr)
    assert.ok(r.stderr.includes(`at byte ${text.length} `), r.stderr)
  })

  it('prints help naming --recursive', async () => {
    const r = await meshbuild('derivation', 'show', '--help')
    assert.equal(r.code, 0)
    assert.match(r.stdout.toString('utf8'), /--recursive/)
  })
})

const VALID = 'Derive([("out","/nix/store/aaaa-x","","")],[("/nix/store/bbbb-d.drv",["dev","out"])],' +
  '["/nix/store/cccc-s"],"x86_64-linux","/bin/sh",["-c","echo \\"hi\\"\\n"],[("a","b"),("out","/nix/store/aaaa-x")])'

describe('malformed ATerm', () => {
  it('the valid base case parses and round-trips', () => {
    assert.equal(serialiseDerivation(parseDerivation(VALID)).toString('utf8'), VALID)
  })

  // input, expected offset, and a fragment of what the error says was expected
  const cases: Array<{ what: string, input: string, offset: number, expected: RegExp }> = [
    { what: 'empty input', input: '', offset: 0, expected: /Derive\(/ },
    { what: 'wrong keyword', input: 'Derivation([],[],[],"s","b",[],[])', offset: 5, expected: /Derive\(/ },
    { what: 'lower-case keyword', input: 'derive([],[],[],"s","b",[],[])', offset: 0, expected: /Derive\(/ },
    { what: 'truncated after the keyword', input: 'Derive(', offset: 7, expected: /'\['/ },
    { what: 'truncated inside a string', input: 'Derive([("out","/nix/st', offset: 23, expected: /closing the string that starts at byte 15/ },
    { what: 'bad escape at end of input', input: 'Derive([("out","/nix/store/x\\', offset: 29, expected: /after '\\'/ },
    { what: 'missing comma between lists', input: 'Derive([][],[],"s","b",[],[])', offset: 9, expected: /','/ },
    { what: 'missing comma between args', input: 'Derive([],[],[],"s","b",["a""b"],[])', offset: 28, expected: /',' or '\]'/ },
    { what: 'leading comma in a list', input: 'Derive([],[],[],"s","b",[,"a"],[])', offset: 25, expected: /starting a string/ },
    { what: 'missing closing parenthesis', input: 'Derive([],[],[],"s","b",[],[]', offset: 29, expected: /'\)'/ },
    { what: 'trailing garbage', input: VALID + 'x', offset: VALID.length, expected: /end of input/ },
    { what: 'trailing newline', input: VALID + '\n', offset: VALID.length, expected: /end of input/ },
    { what: 'unquoted system', input: 'Derive([],[],[],s,"b",[],[])', offset: 16, expected: /starting a string/ },
    { what: 'output tuple with three fields', input: 'Derive([("out","/p","")],[],[],"s","b",[],[])', offset: 22, expected: /','/ },
    { what: 'relative input source', input: 'Derive([],[],["src"],"s","b",[],[])', offset: 14, expected: /absolute path/ },
    { what: 'relative input derivation', input: 'Derive([],[("d.drv",["out"])],[],"s","b",[],[])', offset: 12, expected: /absolute path/ },
    { what: 'unknown hash algorithm', input: 'Derive([("out","/p","sha257","00")],[],[],"s","b",[],[])', offset: 20, expected: /hash algorithm/ },
    { what: 'hash of the wrong length', input: 'Derive([("out","/p","r:sha256","abcd")],[],[],"s","b",[],[])', offset: 31, expected: /sha256 hash/ },
    { what: 'fixed output without a path', input: `Derive([("out","","sha1","${'0'.repeat(40)}")],[],[],"s","b",[],[])`, offset: 15, expected: /absolute path/ },
    { what: 'env pair with three fields', input: 'Derive([],[],[],"s","b",[],[("a","b","c")])', offset: 36, expected: /'\)'/ },
    { what: 'env entry that is not a pair', input: 'Derive([],[],[],"s","b",[],["a"])', offset: 28, expected: /'\('/ }
  ]
  for (const c of cases) {
    it(`${c.what}: DerivationFormatError at byte ${c.offset}`, () => {
      assert.throws(() => parseDerivation(c.input), (err: unknown) => {
        assert.ok(err instanceof DerivationFormatError, String(err))
        assert.equal(err.name, 'DerivationFormatError')
        assert.equal(err.offset, c.offset, err.message)
        assert.match(err.expected, c.expected)
        assert.match(err.message, new RegExp(`at byte ${c.offset} `))
        return true
      })
    })
  }

  it('every truncation of a valid .drv fails at its end, never hangs', () => {
    const bytes = Buffer.from(VALID)
    for (let n = 0; n < bytes.length; n++) {
      assert.throws(() => parseDerivation(bytes.subarray(0, n)), (err: unknown) => {
        assert.ok(err instanceof DerivationFormatError, `cut at ${n}: ${String(err)}`)
        assert.equal(err.offset, n, `cut at ${n}: ${err.message}`)
        return true
      })
    }
  })

  it('reports line and column of the failure', () => {
    // Nix writes the system unescaped, so a raw newline can appear in a .drv.
    const input = 'Derive([],[],[],"a\nbc",x'
    assert.throws(() => parseDerivation(input), (err: unknown) => {
      assert.ok(err instanceof DerivationFormatError)
      assert.equal(err.offset, 23)
      assert.equal(err.line, 2)
      assert.equal(err.column, 5)
      assert.match(err.message, /line 2, column 5/)
      return true
    })
  })

  it('names the file when reading one', async () => {
    const { dir, cleanup } = await tempDir()
    try {
      const file = join(dir, 'bad.drv')
      await writeFile(file, 'Derive(')
      await assert.rejects(readDerivation(file), (err: unknown) => {
        assert.ok(err instanceof DerivationFormatError)
        assert.equal(err.path, file)
        assert.ok(err.message.startsWith(`${file}: `))
        return true
      })
    } finally {
      await cleanup()
    }
  })
})

describe('bytes and strings', () => {
  it('decodeBytes then encodeString gives back any bytes', () => {
    for (let i = 0; i < 2000; i++) {
      const bytes = randomBytes(i % 48)
      // Bias towards bytes near UTF-8's edges.
      for (let j = 0; j < bytes.length; j += 3) bytes[j] = [0x80, 0xbf, 0xc2, 0xe0, 0xed, 0xf0, 0xf4, 0xf5][j % 8] ?? 0
      assert.ok(encodeString(decodeBytes(bytes)).equals(bytes), bytes.toString('hex'))
    }
  })

  it('valid UTF-8 decodes to the ordinary string, BOM included', () => {
    const s = '\ufeffé日本🎉 \u{10080}'
    assert.equal(decodeBytes(Buffer.from(s)), s)
    assert.ok(encodeString(s).equals(Buffer.from(s)))
  })

  it('serialises a derivation built by hand in Nix order, escaping only where Nix does', () => {
    const drv: Derivation = {
      outputs: new Map([['out', { path: '/s/o', hashAlgo: '', hash: '' }], ['dev', { path: '/s/d', hashAlgo: '', hash: '' }]]),
      inputDrvs: new Map([['/s/z.drv', ['out', 'dev', 'out']], ['/s/a.drv', ['out']]]),
      inputSrcs: ['/s/y', '/s/b', '/s/y'],
      system: 'sys',
      builder: '/bin/"sh"',
      args: ['b', 'a\t'],
      env: new Map([['z', '1'], ['a', 'q"\\'], ['é', 'x'], ['e', 'y']])
    }
    assert.equal(serialiseDerivation(drv).toString('utf8'),
      'Derive([("dev","/s/d","",""),("out","/s/o","","")],[("/s/a.drv",["out"]),("/s/z.drv",["dev","out"])],' +
      '["/s/b","/s/y"],"sys","/bin/\\"sh\\"",["b","a\\t"],[("a","q\\"\\\\"),("e","y"),("z","1"),("é","x")])')
  })
})
