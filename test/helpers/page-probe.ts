// Watches a node's status page in headless Chromium and reports what it sees, for tests whose
// node listens on loopback inside a test host: the test runs this script in that host (a browser
// in the root namespace cannot reach it) and asserts on the reports. It only observes.
//
//   node test/helpers/page-probe.ts URL [CHROMIUM]
//
// stdout, one JSON object a line (ProbeReport): `browser` (Chromium's PID, to kill its process
// group should this script die), `loaded` (the HTTP status of the page), then a `snapshot` of the
// page every SNAPSHOT_MS until told to stop. stdin, one JSON object a line (ProbeCommand):
// {"shot": PATH} saves a screenshot and answers `shot`; {"quit": true}, or stdin closing, ends.
import { createInterface } from 'node:readline'
import { chromium, type Page } from 'playwright-core'

export const SNAPSHOT_MS = 200

/** What the page shows at one moment, read in one evaluation so its parts agree. */
export interface PageView {
  /** data-peer of each row of #peers, this node's included. */
  peers: string[]
  /** Derivations shown as being built in the peers' rows (their `building` column). */
  peerBuilds: number
  conn: string
  submissions: Array<{ id: string, state: string, counts: string }>
  running: Array<{ drv: string, text: string }>
  failures: string[]
  /** <b> elements inside #failures: a failure's log markup made an element if any. */
  failureElements: number
  /** <script> elements in the body. */
  scripts: number
  /** `typeof window.pwned`: anything but 'undefined' means an injected script ran. */
  pwned: string
  /** window.mark, set by the probe once the page loaded: gone if the page reloaded. */
  mark: number | null
}

export type ProbeReport =
  | { kind: 'browser', pid: number | null }
  | { kind: 'loaded', status: number | null }
  | { kind: 'snapshot', at: number, view: PageView, errors: string[] }
  | { kind: 'shot', path: string, error?: string }
  | { kind: 'failed', message: string }

export type ProbeCommand = { shot: string } | { quit: true }

// A string, not a function: the page's DOM types are not in this project's lib.
const VIEW = `(() => {
  const q = (s) => Array.from(document.querySelectorAll(s))
  const text = (e) => e?.textContent ?? ''
  return {
    peers: q('#peers tr[data-peer]').map(r => r.getAttribute('data-peer')),
    peerBuilds: q('#peers tr[data-peer] td:nth-child(5) span.mono').length,
    conn: text(document.querySelector('#conn')),
    submissions: q('#submissions tr[data-submission]').map(r => ({
      id: r.getAttribute('data-submission'), state: text(r.querySelector('td:nth-child(2)')), counts: text(r.querySelector('td.counts'))
    })),
    running: q('#running pre[data-drv]').map(p => ({ drv: p.getAttribute('data-drv'), text: text(p) })),
    failures: q('#failures .failure pre').map(text),
    failureElements: q('#failures b').length,
    scripts: q('body script').length,
    pwned: typeof window.pwned,
    mark: typeof window.mark === 'number' ? window.mark : null
  }
})()`

const STEP_MS = 30_000

function report (r: ProbeReport): void {
  process.stdout.write(JSON.stringify(r) + '\n')
}

async function main (url: string, executablePath: string): Promise<void> {
  // A server rather than launch(): its PID goes to the test, which kills its group whatever happens here.
  const server = await chromium.launchServer({ executablePath, args: ['--no-sandbox'], timeout: STEP_MS })
  report({ kind: 'browser', pid: server.process().pid ?? null })
  let stopping = false
  let timer: NodeJS.Timeout | undefined
  const stop = async (code = 0): Promise<void> => {
    if (stopping) return
    stopping = true
    clearTimeout(timer)
    await server.close().catch(() => {})
    process.exit(code)
  }
  const commands = createInterface({ input: process.stdin })
  commands.on('close', () => { void stop() })
  try {
    const browser = await chromium.connect(server.wsEndpoint(), { timeout: STEP_MS })
    const page = await browser.newPage({ viewport: { width: 1000, height: 700 } })
    const errors: string[] = []
    page.on('pageerror', (err) => { errors.push(err.message) })
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()) })
    const res = await page.goto(url, { timeout: STEP_MS })
    await page.evaluate('window.mark = 1')
    report({ kind: 'loaded', status: res?.status() ?? null })
    // Commands are served in order between snapshots, so a shot follows the snapshot before it.
    let queue = Promise.resolve()
    commands.on('line', (line) => {
      const cmd = JSON.parse(line) as ProbeCommand
      queue = queue.then(async () => {
        if ('quit' in cmd) await stop()
        else await shoot(page, cmd.shot)
      })
    })
    const look = async (): Promise<void> => {
      await queue
      if (stopping) return
      const view = await page.evaluate<PageView>(VIEW)
      report({ kind: 'snapshot', at: Date.now(), view, errors: [...errors] })
      timer = setTimeout(() => { void look().catch(fail) }, SNAPSHOT_MS)
    }
    const fail = (err: unknown): void => {
      if (stopping) return
      report({ kind: 'failed', message: err instanceof Error ? err.message : String(err) })
      void stop(1)
    }
    await look()
  } catch (err) {
    report({ kind: 'failed', message: err instanceof Error ? err.message : String(err) })
    await stop(1)
  }
}

async function shoot (page: Page, path: string): Promise<void> {
  try {
    await page.screenshot({ path, timeout: STEP_MS })
    report({ kind: 'shot', path })
  } catch (err) {
    report({ kind: 'shot', path, error: err instanceof Error ? err.message : String(err) })
  }
}

const [url, executablePath] = process.argv.slice(2)
if (url === undefined) {
  process.stderr.write('usage: page-probe.ts URL [CHROMIUM]\n')
  process.exit(2)
}
await main(url, executablePath ?? '/usr/bin/chromium')
