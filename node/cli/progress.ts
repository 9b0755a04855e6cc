// Progress of a submission: a bar redrawn in place on a terminal, plain lines (only when something
// changed) otherwise, so logs and CI output stay readable.
import type { SubmissionReport } from '../mesh/reports.ts'

export interface ProgressCounts {
  done: number
  total: number
  built: number
  substituted: number
  running: number
  queued: number
  failed: number
}

export function countsOf (report: SubmissionReport): ProgressCounts {
  const c = report.counts
  const failed = (c.failed ?? 0) + (c['dependency-failed'] ?? 0)
  const built = c.built ?? 0
  const substituted = c.substituted ?? 0
  return {
    done: built + substituted + failed,
    total: report.results.length,
    built,
    substituted,
    running: c.running ?? 0,
    queued: (c.queued ?? 0) + (c.waiting ?? 0),
    failed
  }
}

export function renderBar (p: ProgressCounts, width = 30): string {
  const filled = p.total === 0 ? width : Math.round((p.done / p.total) * width)
  const bar = '#'.repeat(filled) + '-'.repeat(width - filled)
  return `[${bar}] ${p.done}/${p.total}  built ${p.built + p.substituted}  running ${p.running}  queued ${p.queued}  failed ${p.failed}`
}

export function renderPlain (p: ProgressCounts): string {
  return `progress: ${p.done}/${p.total} done, built ${p.built}, substituted ${p.substituted}, running ${p.running}, queued ${p.queued}, failed ${p.failed}`
}

export class ProgressDisplay {
  private readonly out: NodeJS.WriteStream
  private readonly enabled: boolean
  private readonly tty: boolean
  private last = ''

  constructor (out: NodeJS.WriteStream, enabled: boolean) {
    this.out = out
    this.enabled = enabled
    this.tty = out.isTTY
  }

  update (p: ProgressCounts): void {
    if (!this.enabled) return
    const text = this.tty ? renderBar(p) : renderPlain(p)
    if (text === this.last) return
    this.last = text
    this.out.write(this.tty ? `\r\x1b[K${text}` : `${text}\n`)
  }

  done (): void {
    if (this.enabled && this.tty && this.last !== '') this.out.write('\n')
  }

  /**
   * Takes the bar off its line, so that other lines (build logs) can be written there; the next
   * update draws it again below them.
   */
  clear (): void {
    if (!this.enabled || !this.tty || this.last === '') return
    this.out.write('\r\x1b[K')
    this.last = ''
  }
}
