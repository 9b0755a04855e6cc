// `npm run sim -- --workload nixpkgs --jobs 2000 --nodes 30 --policy meshbuild --seed 1 [--json]`:
// one simulated run (bench/sim/simulator.ts), printed as a few lines or, with --json, one object.
import { parseArgs } from 'node:util'
import { readFileSync } from 'node:fs'
import { CALIBRATIONS, type Calibration, type CalibrationName } from './calibration.ts'
import { makeCluster } from './cluster.ts'
import { POLICIES, type PolicyName } from './policy.ts'
import { simulate, type SimResult } from './simulator.ts'
import { generateWorkload, WORKLOADS, type Estimates } from './workloads.ts'

class UsageError extends Error {
  override name = 'UsageError'
}

const USAGE = `usage: npm run sim -- --workload ${WORKLOADS.join('|')} --jobs N --nodes M
  --policy ${POLICIES.join('|')} --seed S [--fail-rate R] [--json]
  [--gossip exact|coalesced] [--speeds 1,2,3,4] [--slots 2,4,8] [--check]
  [--calibration daemon|cli-trace] [--calibration-file FILE (from bench/sim/calibrate.ts)]
  [--owners K [--shares 1,2]]  K owners (nodes 0..K-1) each submit their own copy of the
                               workload at once, with these share weights (meshbuild only:
                               the baselines have one submitter)
  [--shared [--no-claims]]     with --owners: every owner submits the same derivations instead
                               (buildsPerJob says how often each was built in the mesh); their
                               offers carry their claims, so each is built once and fetched by
                               the others; --no-claims gossips none, the mesh before claims
  [--estimates none|exact|noisy:SIGMA]  meshbuild's owners know each job's build time from
                               history: not at all (none, the default), exactly, or off by a
                               log-normal factor of SIGMA`

function main (argv: string[]): void {
  const { values } = parseArgs({
    args: argv,
    options: {
      workload: { type: 'string', default: 'nixpkgs' },
      jobs: { type: 'string', default: '2000' },
      nodes: { type: 'string', default: '30' },
      policy: { type: 'string', default: 'meshbuild' },
      seed: { type: 'string', default: '1' },
      'fail-rate': { type: 'string', default: '0' },
      gossip: { type: 'string' },
      calibration: { type: 'string', default: 'daemon' },
      'calibration-file': { type: 'string' },
      speeds: { type: 'string' },
      slots: { type: 'string' },
      check: { type: 'boolean', default: false },
      owners: { type: 'string', default: '1' },
      shares: { type: 'string' },
      shared: { type: 'boolean', default: false },
      'no-claims': { type: 'boolean', default: false },
      estimates: { type: 'string', default: 'none' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false }
    },
    strict: true
  })
  if (values.help) { process.stdout.write(`${USAGE}\n`); return }
  const workload = oneOf(values.workload, WORKLOADS, '--workload')
  const policy = oneOf(values.policy, POLICIES, '--policy')
  const jobs = integer(values.jobs, '--jobs')
  const nodes = integer(values.nodes, '--nodes')
  const seed = integer(values.seed, '--seed')
  const failRate = Number(values['fail-rate'])
  if (!(failRate >= 0 && failRate <= 1)) throw new UsageError(`--fail-rate is a share of the nodes, 0..1, not ${values['fail-rate']}`)
  const profile = CALIBRATIONS[oneOf(values.calibration, Object.keys(CALIBRATIONS) as CalibrationName[], '--calibration')]
  const file = values['calibration-file']
  const calibration: Calibration = file === undefined ? profile : { ...profile, ...(JSON.parse(readFileSync(file, 'utf8')) as Partial<Calibration>) }
  const owners = integer(values.owners, '--owners')
  if (owners < 1 || owners > nodes) throw new UsageError(`--owners must be 1..${nodes} (the nodes), not ${owners}`)
  if (owners > 1 && policy !== 'meshbuild') throw new UsageError(`--owners ${owners}: only --policy meshbuild simulates several owners; the baselines have one submitter`)
  const shares = values.shares === undefined ? undefined : numbers(values.shares, '--shares')
  if (shares !== undefined && shares.length !== owners) throw new UsageError(`--shares needs one weight per owner (${owners}), not ${shares.length}`)
  if (values.shared && owners < 2) throw new UsageError('--shared needs --owners 2 or more: the owners share the derivations')
  if (values['no-claims'] && !values.shared) throw new UsageError('--no-claims needs --shared: only owners sharing derivations have claims to act on')
  const estimates = estimatesOf(values.estimates)
  const gossip = values.gossip === undefined ? undefined : oneOf(values.gossip, ['exact', 'coalesced'] as const, '--gossip')
  const cluster = makeCluster(nodes, seed, {
    ...(values.speeds !== undefined ? { speeds: numbers(values.speeds, '--speeds') } : {}),
    ...(values.slots !== undefined ? { slots: numbers(values.slots, '--slots') } : {})
  })
  const result = simulate({
    workload: generateWorkload(workload, jobs, seed),
    cluster,
    policy: policy as PolicyName,
    seed,
    failRate,
    check: values.check,
    calibration,
    ...(gossip !== undefined ? { gossip } : {}),
    ...(owners > 1 ? { owners } : {}),
    ...(shares !== undefined ? { shares } : {}),
    ...(estimates !== undefined ? { estimates } : {}),
    ...(values.shared ? { shared: true, claims: !values['no-claims'] } : {})
  })
  process.stdout.write(values.json ? `${JSON.stringify(summary(result))}\n` : text(result))
}

/** The fields issue 10 names, then the rest. */
function summary (r: SimResult): Record<string, unknown> {
  return {
    makespan: r.makespan,
    lowerBound: r.lowerBound,
    ratio: r.ratio,
    tightLowerBound: r.tightLowerBound,
    tightRatio: r.tightRatio,
    messagesPerJob: r.messagesPerJob,
    stealsPerJob: r.stealsPerJob,
    buildsPerJob: r.buildsPerJob,
    bytesMoved: r.bytesMoved,
    idleSlotSeconds: r.idleSlotSeconds,
    submitterUplinkSeconds: r.submitterUplinkSeconds,
    wallMs: Math.round(r.wallMs),
    workload: r.workload,
    policy: r.policy,
    jobs: r.jobs,
    nodes: r.nodes,
    seed: r.seed,
    failRate: r.failRate,
    deaths: r.deaths,
    allBuilt: r.allBuilt,
    criticalPath: r.criticalPath,
    workBound: r.workBound,
    traceHash: r.traceHash,
    ...(r.owners !== undefined ? { owners: r.owners, fairness: r.fairness } : {}),
    ...(r.shared !== undefined ? { shared: r.shared } : {}),
    counters: r.counters
  }
}

function text (r: SimResult): string {
  const c = r.counters
  return [
    `${r.workload}: ${r.jobs} jobs on ${r.nodes} nodes, ${r.policy}, seed ${r.seed}${r.failRate > 0 ? `, fail rate ${r.failRate} (${r.deaths} died)` : ''}`,
    `makespan ${r.makespan.toFixed(1)} s, lower bound ${r.lowerBound.toFixed(1)} s (critical path ${r.criticalPath.toFixed(1)} s, work ÷ capacity ${r.workBound.toFixed(1)} s): ${r.ratio.toFixed(3)} × LB`,
    `tighter bound ${r.tightLowerBound.toFixed(1)} s (the head everything waits for at the fastest speed, then the rest over all capacity): ${r.tightRatio.toFixed(3)} × that`,
    `${r.messagesPerJob.toFixed(1)} messages/job, ${r.stealsPerJob.toFixed(2)} steals/job (${c.emptySteals} empty), ${(r.bytesMoved / 2 ** 20).toFixed(0)} MiB moved, ${r.idleSlotSeconds.toFixed(0)} idle slot-s while work was ready, submitter's uplink busy ${r.submitterUplinkSeconds.toFixed(0)} s`,
    ...(r.shared !== undefined ? [`the owners share the derivations, ${r.shared.claims ? 'with' : 'without'} claims: ${r.buildsPerJob.toFixed(3)} builds per derivation`] : []),
    ...(r.owners ?? []).map((o, i) => `owner ${i} (share ${o.share}): makespan ${o.makespan.toFixed(1)} s, ${(100 * o.slotShare).toFixed(1)} % of the slots while all had work${o.allBuilt ? '' : ', NOT all built'}`),
    ...(r.fairness !== undefined ? [`fairness (Jain's index of slot share ÷ share) ${r.fairness.toFixed(3)}`] : []),
    `${c.events} events, ${c.handleCalls} scheduler calls, ${Math.round(r.wallMs)} ms wall; trace ${r.traceHash}` +
      (Object.keys(c.unknownDecisions).length > 0 ? `; unknown decisions ${JSON.stringify(c.unknownDecisions)}` : ''),
    ''
  ].join('\n')
}

/** none | exact | noisy:SIGMA (the history off by a log-normal factor of that sigma). */
function estimatesOf (value: string | undefined): Estimates | undefined {
  if (value === undefined || value === 'none') return undefined
  if (value === 'exact') return { kind: 'exact' }
  const m = /^noisy:([0-9.]+)$/.exec(value)
  if (m !== null && Number(m[1]) >= 0) return { kind: 'noisy', sigma: Number(m[1]) }
  throw new UsageError(`--estimates must be none, exact or noisy:SIGMA, not ${value}`)
}

function oneOf<T extends string> (value: string | undefined, allowed: readonly T[], flag: string): T {
  if (value !== undefined && (allowed as readonly string[]).includes(value)) return value as T
  throw new UsageError(`${flag} must be one of ${allowed.join(', ')}, not ${value ?? '(none)'}`)
}

function integer (value: string | undefined, flag: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`${flag} must be a whole number, not ${value ?? '(none)'}`)
  return n
}

function numbers (value: string, flag: string): number[] {
  const list = value.split(',').map(Number)
  if (list.length === 0 || list.some(x => !(x > 0))) throw new UsageError(`${flag} is a comma-separated list of positive numbers, not ${value}`)
  return list
}

try {
  main(process.argv.slice(2))
} catch (err) {
  const e = err as Error
  process.stderr.write(e.name === 'UsageError' ? `${e.message}\n${USAGE}\n` : `sim: ${e.name}: ${e.message}\n`)
  process.exitCode = e.name === 'UsageError' ? 2 : 1
}
