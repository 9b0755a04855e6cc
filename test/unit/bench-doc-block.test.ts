// bench/doc-block.ts: a bench's generated block of docs/benchmarks.md, written while people edit
// the rest of the file: created once under its heading, then only its inside is replaced.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { beginMarker, endMarker, markdownTable, PLACES, replaceBlock, writeBlock } from '../../bench/doc-block.ts'

const BEGIN = '<!-- generated: sim (npm run bench) begin -->'
const END = '<!-- generated: sim end -->'
const PLACE = { heading: '## Simulator', intro: 'The block below is generated.' }

// Hand-written text around the section, with the things a careless writer would lose: no final
// newline, trailing spaces, CRLF in one line, a table, and a later heading that also matches a prefix.
const DOC = [
  '# Benchmarks',
  '',
  'Intro with trailing spaces.   ',
  '## Simulator: the real scheduler at scale (first figures, 2026-12-02)',
  '',
  'Hand-written figures.\r',
  '| a | b |',
  '|---|---|',
  '',
  '## Simulator notes (a later section)',
  'more'
].join('\n')

async function withTempDoc (text: string, f: (file: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'doc-block-'))
  try {
    const file = join(dir, 'benchmarks.md')
    await writeFile(file, text)
    await f(file)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

describe('doc blocks', () => {
  it('spells the markers as the docs and the other benches expect', () => {
    assert.equal(beginMarker('sim'), BEGIN)
    assert.equal(endMarker('sim'), END)
    assert.equal(beginMarker('targets'), '<!-- generated: targets (npm run bench) begin -->')
  })

  it('creates the block, after the intro, right under the first matching heading', async () => {
    await withTempDoc(DOC, async file => {
      await writeBlock(file, 'sim', 'first table', PLACE)
      const lines = DOC.split('\n')
      assert.equal(await readFile(file, 'utf8'), [
        ...lines.slice(0, 4), '', PLACE.intro, '', BEGIN, 'first table', END, ...lines.slice(4)
      ].join('\n'))
    })
  })

  it('on a later run replaces only what is between the markers, every other byte as it was', async () => {
    await withTempDoc(DOC, async file => {
      await writeBlock(file, 'sim', 'first\ntable\n\n', PLACE)
      const created = await readFile(file, 'utf8')
      // Someone edits above and below the block between two runs.
      const edited = created.replace('# Benchmarks', '# Benchmarks (edited)') + '\nappended by hand'
      await writeFile(file, edited)
      await writeBlock(file, 'sim', 'second run\n| x |', PLACE)
      const after = await readFile(file, 'utf8')
      const b = edited.indexOf(BEGIN) + BEGIN.length
      const e = edited.indexOf(END)
      assert.equal(after, `${edited.slice(0, b)}\nsecond run\n| x |\n${edited.slice(e)}`)
      assert.equal(after.split(PLACE.intro).length, 2, 'the intro is written once, not again')
      assert.ok(after.includes('Hand-written figures.\r\n') && after.includes('trailing spaces.   \n') && after.endsWith('appended by hand'))
    })
  })

  it('keeps another bench\'s block when writing its own', async () => {
    await withTempDoc(DOC, async file => {
      await writeBlock(file, 'sim', 'sim figures', PLACE)
      await writeBlock(file, 'targets', 'targets figures', { heading: '## Simulator notes' })
      await writeBlock(file, 'sim', 'new sim figures', PLACE)
      const text = await readFile(file, 'utf8')
      assert.ok(text.includes(`${BEGIN}\nnew sim figures\n${END}`))
      assert.ok(text.includes('## Simulator notes (a later section)\n\n<!-- generated: targets (npm run bench) begin -->\ntargets figures\n<!-- generated: targets end -->\nmore'))
    })
  })

  it('on a copy of docs/benchmarks.md, puts the sim and targets blocks under their sections and changes nothing else', async () => {
    const real = await readFile(fileURLToPath(new URL('../../docs/benchmarks.md', import.meta.url)), 'utf8')
    // The hand-written lines, whatever the real file holds now: without the blocks, their intros and blank lines.
    const intros = new Set(Object.values(PLACES).flatMap(p => p.intro.split('\n')))
    const handWritten = (text: string): string[] => text
      .replace(/<!-- generated: (\w+) \(npm run bench\) begin -->[\s\S]*?<!-- generated: \1 end -->/g, '')
      .split('\n').filter(l => l.trim() !== '' && !intros.has(l))
    await withTempDoc(real, async file => {
      await writeBlock(file, 'sim', 'SIM', PLACES.sim)
      await writeBlock(file, 'targets', 'TARGETS', PLACES.targets)
      const text = await readFile(file, 'utf8')
      for (const [name, place] of Object.entries(PLACES)) {
        const lines = text.split('\n')
        const heading = lines.findIndex(l => l.startsWith(place.heading))
        const begin = lines.indexOf(beginMarker(name))
        const nextHeading = lines.findIndex((l, i) => i > heading && l.startsWith('## '))
        assert.ok(heading >= 0 && begin > heading && begin < nextHeading, `the ${name} block is in the section ${place.heading}`)
        assert.equal(lines[begin + 1], name.toUpperCase())
        assert.equal(lines[begin + 2], endMarker(name))
      }
      assert.deepEqual(handWritten(text), handWritten(real))
      assert.ok(handWritten(real).length > 100, 'the real file was read')
    })
  })

  it('refuses a file with a begin marker and no end marker, and leaves it unwritten', async () => {
    const cut = `${DOC}\n${BEGIN}\nhalf a block`
    await withTempDoc(cut, async file => {
      await assert.rejects(writeBlock(file, 'sim', 'table', PLACE), (err: Error) => {
        assert.equal(err.name, 'DocBlockError')
        assert.match(err.message, /has no <!-- generated: sim end --> after it/)
        return true
      })
      assert.equal(await readFile(file, 'utf8'), cut)
    })
  })

  const refused: Array<[string, string, RegExp]> = [
    ['an end marker with no begin', `${DOC}\n${END}`, /has no .* before it/],
    ['the markers in the wrong order', `${DOC}\n${END}\n${BEGIN}`, /comes before/],
    ['two begin markers', `${DOC}\n${BEGIN}\n${BEGIN}\n${END}`, /more than once/],
    ['no block and no such heading', '# Benchmarks\n## Mesh\n', /no heading starting "## Simulator"/]
  ]
  for (const [what, text, message] of refused) {
    it(`refuses ${what}`, () => {
      assert.throws(() => replaceBlock(text, 'sim', 'table', PLACE), (err: Error) => err.name === 'DocBlockError' && message.test(err.message))
    })
  }

  it('refuses a body that holds its own end marker (it would cut the block on the next run)', () => {
    assert.throws(() => replaceBlock(DOC, 'sim', `x\n${END}`, PLACE), { name: 'DocBlockError' })
  })

  it('renders a Markdown table of the chosen columns, escaping pipes', () => {
    assert.equal(markdownTable([{ a: 1, b: 'x|y', c: 'unused' }, { a: 2 }], ['a', 'b']),
      '| a | b |\n|---|---|\n| 1 | x\\|y |\n| 2 |  |')
  })
})
