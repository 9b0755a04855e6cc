// `meshbuild status`: this node and its peers, then this node's submissions.
import type { Argv, CommandModule } from 'yargs'
import { controlCall } from '../../control/control-client.ts'
import type { NodeFields, StatusReport } from '../../mesh/reports.ts'
import { dataDirOption } from '../data-dir.ts'
import { CommandFailed } from '../exit-codes.ts'
import { DRV_EXTENSION, parseStorePath } from '../../../protocols/nix/store-path.ts'

interface StatusArgs {
  'data-dir': string
  json: boolean
  watch: boolean
  interval: number
}

export const statusCommand: CommandModule<object, StatusArgs> = {
  command: 'status',
  describe: 'Show the mesh: peers, their load and builds, and this node\'s submissions',
  builder: (y: Argv) => y
    .option('data-dir', dataDirOption)
    .option('json', { type: 'boolean', default: false, describe: 'Print one JSON object: self, peers, submissions' })
    .option('watch', { type: 'boolean', default: false, describe: 'Refresh in place until interrupted' })
    .option('interval', { type: 'number', default: 1, describe: 'Seconds between refreshes with --watch' }) as unknown as Argv<StatusArgs>,
  handler: async (args) => {
    const fetch = async (): Promise<StatusReport> => {
      const reply = await controlCall(args['data-dir'], { op: 'status' })
      if (!('status' in reply)) throw new CommandFailed('the node answered without a status')
      return reply.status
    }
    if (!args.watch) {
      const s = await fetch()
      process.stdout.write(args.json ? `${JSON.stringify(s, null, 2)}\n` : renderStatus(s, new Date()))
      return
    }
    for (;;) {
      const s = await fetch()
      process.stdout.write(args.json ? `${JSON.stringify(s)}\n` : `\x1b[H\x1b[2J${renderStatus(s, new Date())}`)
      await new Promise(resolve => setTimeout(resolve, Math.max(0.2, args.interval) * 1000))
    }
  }
}

export function renderStatus (s: StatusReport, now: Date): string {
  const rows: string[][] = [['PEER', 'ADDRESS', 'SYSTEMS', 'SLOTS', 'QUEUE', 'SPEED', 'BUILDING', 'LAST SEEN']]
  const row = (n: NodeFields, self: boolean): string[] => [
    `${shortId(n.peerId)}${self ? ' (self)' : ''}`,
    n.addresses.find(a => !a.includes('/127.0.0.1/')) ?? n.addresses[0] ?? '-',
    n.systems.length > 2 ? `${n.systems.slice(0, 1).join(',')} +${n.systems.length - 1}` : n.systems.join(','),
    `${n.running}/${n.maxJobs}${n.diskLow ? ' disk low' : ''}`,
    String(n.queued),
    String(n.speedFactor),
    n.building.length === 0 ? '-' : n.building.map(drvName).join(', '),
    self ? 'now' : ago(now.getTime() - Date.parse(n.lastSeen))
  ]
  rows.push(row(s.self, true))
  for (const p of s.peers) rows.push(row(p, false))
  let out = table(rows)
  out += '\n'
  // Older nodes' reports lack membership.
  if (s.self.membership === 'open') {
    out += 'Membership: OPEN (--open): any meshbuild node on this network started with --open can join, take and return jobs, and submit builds here\n'
  } else if (s.self.membership === 'closed') {
    out += 'Membership: closed: only nodes holding this node\'s mesh secret file can connect\n'
  }
  // Older nodes' reports, and nodes started with --http-listen off, have no listener.
  if (s.http !== undefined) out += `HTTP: status page ${s.http.url}/, Prometheus metrics at ${s.http.metrics}\n`
  if (s.builder !== undefined) {
    const b = s.builder
    out += `Builder socket: ${b.socket} (nix.conf: builders = @${b.machinesFile}); ${b.connections} connection(s); plain Nix builds: ${b.builds.built} built, ${b.builds.failed} failed, ${b.builds.running} running\n`
    out += `  machines file: ${b.machines === '' ? '(empty: no peer builds, Nix builds locally)' : b.machines}\n`
  }
  if (s.buildHistory !== undefined) {
    const h = s.buildHistory
    out += h.names === 0
      ? 'Build times: none known yet (jobs are ordered by the number of jobs they unblock until this node has seen builds)\n'
      : `Build times: ${h.names} derivation name(s) known from earlier builds (${h.entries} of at most ${h.maxEntries} entries with package names): new jobs of those names are planned with them\n`
  }
  if (s.signer === undefined) {
    out += `Signer: none online${s.signQueue > 0 ? `; ${s.signQueue} output(s) of this node wait for one` : ''}\n`
  } else {
    const g = s.signer
    const rate = g.hitRate === null ? 'no lookups yet' : `hit rate ${(g.hitRate * 100).toFixed(0)}% of ${g.hits + g.misses} lookups`
    out += `Signer: ${shortId(g.peerId)}${g.peerId === s.self.peerId ? ' (self)' : ''}  cache ${g.cacheUrls[0] ?? '(no HTTP)'}  ${g.paths} paths, ${(g.narBytes / 1048576).toFixed(1)} MiB of NARs, ${rate}\n`
    out += `  key ${g.cacheKey}${s.signQueue > 0 ? `; ${s.signQueue} output(s) of this node not yet stored` : ''}\n`
    if (g.trust !== undefined) out += `  trusts ${g.trust.policy}: ${g.trust.keys.map(k => k.split(':')[0]).join(', ') || 'none'}\n`
    for (const r of (g.rejections ?? []).slice(-10)) {
      out += `  refused ${r.path} from ${shortId(r.from)}: ${r.reason}\n`
    }
  }
  if (s.cache !== undefined) {
    out += s.cache.url !== undefined ? `Cache: substituting from ${s.cache.url} (${s.cache.reason})\n` : `Cache: none used (${s.cache.reason})\n`
    for (const i of s.cache.ignored) out += `  ignored signer ${shortId(i.peerId)} with cache key ${i.cacheKey}: ${i.reason}\n`
  }
  // Older nodes' reports lack these fields.
  for (const p of s.penalties ?? []) {
    out += `Cut off: ${shortId(p.peer)} until ${p.until}${p.count > 1 ? ` (${p.count} times lately)` : ''}: ${p.reason}\n`
  }
  const refused = Object.entries(s.refusedStreams ?? {})
  if (refused.length > 0) out += `Refused for rate: ${refused.map(([protocol, n]) => `${n} ${protocol}`).join(', ')}\n`
  out += '\n'
  if (s.submissions.length === 0) {
    out += 'No submissions on this node.\n'
  } else {
    const subs: string[][] = [['SUBMISSION', 'STATE', 'BUILT', 'RUNNING', 'QUEUED', 'FAILED', 'SUBMITTED']]
    for (const x of s.submissions) {
      const c = x.counts
      subs.push([x.id, x.state, String((c.built ?? 0) + (c.substituted ?? 0)), String(c.running ?? 0),
        String((c.queued ?? 0) + (c.waiting ?? 0)), String((c.failed ?? 0) + (c['dependency-failed'] ?? 0)), x.submittedAt])
    }
    out += table(subs)
    for (const x of s.submissions) {
      const n = x.awaitingSecondBuilder ?? 0
      if (n > 0) out += `${x.id}: ${n} job(s) built once, awaiting a second builder (--check-reproducible needs another peer able to build them)\n`
    }
  }
  return out
}

function table (rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map(r => (r[i] ?? '').length))) ?? []
  return rows.map(r => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n') + '\n'
}

function shortId (id: string): string {
  return id.length > 16 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id
}

function drvName (p: string): string {
  try {
    const { name } = parseStorePath(p)
    return name.endsWith(DRV_EXTENSION) ? name.slice(0, -DRV_EXTENSION.length) : name
  } catch {
    return p // not a store path: shown as it is
  }
}

function ago (ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  return s < 60 ? `${s}s ago` : `${Math.round(s / 60)}m ago`
}
