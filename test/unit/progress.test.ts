// The submit progress bar around other lines (submit -L's build logs): on a terminal the bar is
// taken off its line and drawn again below them, leaving no blank lines; elsewhere plain lines.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ProgressDisplay, type ProgressCounts } from '../../node/cli/progress.ts'

function sink (isTTY: boolean): { stream: NodeJS.WriteStream, text: () => string } {
  let text = ''
  const stream = { isTTY, write: (s: string) => { text += s; return true } } as unknown as NodeJS.WriteStream
  return { stream, text: () => text }
}

const counts = (done: number): ProgressCounts => ({ done, total: 4, built: done, substituted: 0, running: 1, queued: 4 - done - 1, failed: 0 })

test('on a terminal, clear() erases the bar in place and the next update redraws it: no blank line', () => {
  const out = sink(true)
  const d = new ProgressDisplay(out.stream, true)
  d.update(counts(1))
  d.clear()
  out.stream.write('lib> a log line\n')
  d.update(counts(1)) // the same counts: drawn again all the same, since the bar was cleared
  const screen = out.text()
  assert.equal(screen.split('\n').length, 2, JSON.stringify(screen))
  assert.match(screen, /^\r\x1b\[K\[#+-+\] 1\/4 .*\r\x1b\[Klib> a log line\n\r\x1b\[K\[#+-+\] 1\/4 /)
})

test('not on a terminal, clear() writes nothing and progress stays plain lines', () => {
  const out = sink(false)
  const d = new ProgressDisplay(out.stream, true)
  d.update(counts(1))
  d.clear()
  d.update(counts(2))
  assert.equal(out.text(), 'progress: 1/4 done, built 1, substituted 0, running 1, queued 2, failed 0\nprogress: 2/4 done, built 2, substituted 0, running 1, queued 1, failed 0\n')
})
