// Drv lists as users write them: comments, blank lines, Windows line endings, stray spaces. A bad
// line refuses the whole list, and the error names every bad line by number.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { checkValid, DrvListError, parseDrvList, type DrvListProblem } from '../../node/cli/drv-list.ts'

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

  it('passes when every path is valid', () => {
    checkValid(entries, new Set([A, B, OUT]), 'list.txt')
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
