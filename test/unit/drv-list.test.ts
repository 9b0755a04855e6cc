// Drv lists as users write them: comments, blank lines, Windows line endings, stray spaces. A bad
// line refuses the whole list, and the error names every bad line by number.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { checkValid, DrvListError, MAX_PROBLEMS_SHOWN, parseDrvList, printable, type DrvListProblem } from '../../node/cli/drv-list.ts'

const A = '/nix/store/0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-a.drv'
const B = '/nix/store/1xh2mx6wsnyhq8lygnxq3c5m6x5j8l8y-b-1.0.drv'
const OUT = '/nix/store/0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-a'

interface Good { name: string, text: string, entries: Array<[number, string]> }
interface Bad { name: string, text: string, problems: Array<[number, RegExp]> }

const good: Good[] = [
  { name: 'one path', text: `${A}\n`, entries: [[1, A]] },
  { name: 'no final newline', text: `${A}\n${B}`, entries: [[1, A], [2, B]] },
  { name: 'comments and blank lines', text: `# what to build\n\n${A}   # the first\n\n  # indented comment\n${B}\n\n`, entries: [[3, A], [6, B]] },
  { name: 'CRLF line endings', text: `# from Windows\r\n${A}\r\n\r\n${B}\r\n`, entries: [[2, A], [4, B]] },
  { name: 'CRLF with a comment after the path', text: `${A} # c\r\n${B}\r\n`, entries: [[1, A], [2, B]] },
  { name: 'leading and trailing spaces and tabs', text: `   ${A}\t \n\t${B}  \n`, entries: [[1, A], [2, B]] },
  { name: 'a lone carriage return line', text: `\r\n${A}\r`, entries: [[2, A]] },
  { name: 'the same path twice', text: `${A}\n${A}\n`, entries: [[1, A], [2, A]] }
]

const bad: Bad[] = [
  { name: 'a path outside the store', text: `${A}\n/tmp/foo.drv\n`, problems: [[2, /^not a store path \(.*\/tmp\/foo\.drv/]] },
  { name: 'a relative path', text: 'foo.drv\n', problems: [[1, /^not a store path/]] },
  { name: 'a store path that is not a .drv', text: `${A}\r\n${OUT}\r\n`, problems: [[2, /^not a derivation \(a \.drv store path\)$/]] },
  { name: 'a bad hash character (e is not nix32)', text: `# x\n/nix/store/ec1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-a.drv\n`, problems: [[2, /^not a store path \(.*illegal nix32 character 'e' at offset 0/]] },
  { name: 'a short hash', text: '/nix/store/abc-a.drv\n', problems: [[1, /^not a store path/]] },
  { name: 'a bad name character', text: '/nix/store/0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm-a b.drv\n', problems: [[1, /^not a store path \(.*illegal character ' '/]] },
  { name: 'every bad line, not just the first', text: `/x.drv\n${A}\n${OUT}\n\n/nix/store/short.drv\n`, problems: [[1, /^not a store path/], [3, /^not a derivation/], [5, /^not a store path/]] },
  { name: 'an empty list', text: '', problems: [[1, /^the list names no derivation$/]] },
  { name: 'only comments and blank lines', text: '# nothing\n\n   \r\n', problems: [[4, /^the list names no derivation$/]] }
]

describe('parseDrvList', () => {
  for (const c of good) {
    it(`accepts ${c.name}`, () => {
      const entries = parseDrvList(c.text, 'list.txt')
      assert.deepEqual(entries.map(e => [e.line, e.drvPath]), c.entries)
      for (const e of entries) assert.ok(!e.drvPath.includes('\r') && e.drvPath.trim() === e.drvPath)
    })
  }

  for (const c of bad) {
    it(`refuses ${c.name}, naming the line`, () => {
      let error: unknown
      try { parseDrvList(c.text, 'list.txt') } catch (err) { error = err }
      assert.ok(error instanceof DrvListError, `expected DrvListError, got ${String(error)}`)
      assert.equal(error.name, 'DrvListError')
      assert.deepEqual(error.problems.map(p => p.line), c.problems.map(p => p[0]))
      c.problems.forEach(([line, re], i) => {
        const p = error.problems[i] as DrvListProblem
        assert.match(p.problem, re)
        assert.ok(!p.text.includes('\r'), 'the quoted line carries no carriage return')
        // The message a user reads says file:line and quotes the line.
        assert.match(error.message, new RegExp(`^list\\.txt:${line}: `, 'm'))
      })
      assert.equal(error.message.split('\n').length, c.problems.length)
    })
  }

  it('quotes the bad line without its comment or spaces', () => {
    assert.throws(() => parseDrvList(`  ${OUT}  # an output, not a drv\r\n`, '<stdin>'), (err: Error) => {
      assert.equal(err.message, `<stdin>:1: not a derivation (a .drv store path): ${JSON.stringify(OUT)}`)
      return true
    })
  })
})

describe('checkValid', () => {
  const entries = parseDrvList(`# two\n${A}\n\n${B}\n`, 'list.txt')

  it('passes when every path is valid, and only then', () => {
    assert.doesNotThrow(() => { checkValid(entries, new Set([A, B, OUT]), 'list.txt') })
    assert.doesNotThrow(() => { checkValid(entries, new Set([A, B]), 'list.txt') })
    // The same call with one path taken away refuses: the passes above are checkValid's doing.
    assert.throws(() => { checkValid(entries, new Set([B, OUT]), 'list.txt') }, DrvListError)
  })

  it('names the lines of paths not valid in the store', () => {
    assert.throws(() => { checkValid(entries, new Set([A]), 'list.txt') }, (err: unknown) => {
      assert.ok(err instanceof DrvListError)
      assert.deepEqual(err.problems, [{ line: 4, text: B, problem: 'not valid in the local Nix store' }])
      assert.equal(err.message, `list.txt:4: not valid in the local Nix store: ${JSON.stringify(B)}`)
      return true
    })
  })

  it('names all of them when none is valid', () => {
    assert.throws(() => { checkValid(entries, new Set(), 'l') }, (err: unknown) => {
      assert.ok(err instanceof DrvListError)
      assert.deepEqual(err.problems.map(p => p.line), [2, 4])
      return true
    })
  })
})

describe('binary garbage in a drv list', () => {
  // What a terminal acts on instead of showing: ESC (colours, clear screen, title setting), BEL,
  // DEL, the one-byte CSI of C1, a bidi override, and the U+FFFD of bytes that were not UTF-8.
  const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\ufffd]/u
  const garbage = Buffer.from([
    ...Buffer.from('/nix/store/\x1b[31mred\x1b]0;owned\x07\x7f'), 0xc2, 0x9b, ...Buffer.from('\u202eevil.drv\n'),
    0x00, 0x01, 0xff, 0xfe, 0x1b, ...Buffer.from('[2J\n'),
    ...Buffer.from(`${A}\n`)
  ]).toString('utf8')

  it('never puts a control or non-printable character in the message, and keeps the line numbers', () => {
    assert.throws(() => parseDrvList(garbage, 'list.bin'), (err: unknown) => {
      assert.ok(err instanceof DrvListError)
      assert.deepEqual(err.problems.map(p => p.line), [1, 2])
      assert.doesNotMatch(err.message, UNSAFE)
      const lines = err.message.split('\n')
      assert.equal(lines.length, 2)
      assert.match(lines[0] ?? '', /^list\.bin:1: not a store path .*\\x1b\[31mred\\x1b\]0;owned\\x07\\x7f\\x9b\\u202eevil\.drv/)
      assert.match(lines[1] ?? '', /^list\.bin:2: not a store path .*\\x00\\x01\\ufffd\\ufffd\\x1b\[2J/)
      // The raw problem stays available to callers, unescaped.
      assert.match(err.problems[0]?.text ?? '', /\x1b\[31m/)
      return true
    })
  })

  it('cuts a huge line and lists a bounded number of problems', () => {
    const text = `${'\x00'.repeat(1_000_000)}\n` + Array.from({ length: 100 }, () => 'junk\n').join('')
    assert.throws(() => parseDrvList(text, 'big'), (err: unknown) => {
      assert.ok(err instanceof DrvListError)
      assert.equal(err.problems.length, 101)
      assert.ok(err.message.length < 20_000, `message of ${err.message.length} characters`)
      const lines = err.message.split('\n')
      assert.equal(lines.length, MAX_PROBLEMS_SHOWN + 1)
      assert.match(lines.at(-1) ?? '', /and 81 more bad line\(s\)/)
      assert.match(lines[0] ?? '', /\(1000000 characters\)/)
      return true
    })
  })

  it('printable escapes backslashes, so an escape cannot be forged', () => {
    assert.equal(printable('a\\x1b b\x1b'), 'a\\\\x1b b\\x1b')
    assert.equal(printable('plain /nix/store/x-é.drv'), 'plain /nix/store/x-é.drv')
  })
})
