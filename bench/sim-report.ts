// `node bench/run.ts sim`: the simulator's sweeps for issue 10, written into docs/benchmarks.md's
// generated sim block (bench/doc-block.ts) with docs/sim-messages.svg beside it:
//   1. makespan ÷ LB for each workload × policy, JOBS jobs on NODES nodes of the default
//      heterogeneous cluster (bench/sim/cluster.ts), seeds 1..SEEDS: mean and range;
//      meshbuild twice: without build-time estimates (a first build) and with the history's,
//      off by a log-normal factor (σ HISTORY_SIGMA: a package's previous version);
//   2. meshbuild's messages and steals per job as the mesh grows (layered, MESH_JOBS jobs, seed 1);
//   3. issue 10's scale targets: nixpkgs-like 10,000 × 30 (seeds 1..SEEDS, every policy) and
//      100,000 × 1,000 (seed 1, meshbuild), with the simulator's own wall time.
// Knobs for a quicker run: BENCH_SIM_SEEDS (3), BENCH_SIM_JOBS (2000), BENCH_SIM_NODES (30),
// BENCH_SIM_MESH_SIZES (10,30,100,300,1000), BENCH_SIM_MESH_JOBS (2000), BENCH_SIM_SCALE=0 (no
// part 3); BENCH_SIM_DOC=FILE writes another Markdown file (the SVG beside it), =none neither.
import { writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { commandLine, gitCommit, loadAverage, machine, markdownTable, PLACES, wrap, writeBlock } from './doc-block.ts'
import type { BenchRow } from './run.ts'
import { DEFAULT_SLOTS, DEFAULT_SPEEDS, makeCluster } from './sim/cluster.ts'
import { POLICIES, type PolicyName } from './sim/policy.ts'
import { COALESCE_FROM_NODES, simulate, type SimResult } from './sim/simulator.ts'
import { generateWorkload, WORKLOADS, type Estimates, type WorkloadName } from './sim/workloads.ts'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const SEEDS = Number(process.env.BENCH_SIM_SEEDS ?? 3)
const JOBS = Number(process.env.BENCH_SIM_JOBS ?? 2_000)
const NODES = Number(process.env.BENCH_SIM_NODES ?? 30)
const MESH_SIZES = (process.env.BENCH_SIM_MESH_SIZES ?? '10,30,100,300,1000').split(',').map(Number)
const MESH_JOBS = Number(process.env.BENCH_SIM_MESH_JOBS ?? 2_000)
const MESH_WORKLOAD: WorkloadName = 'layered'
const SCALE = process.env.BENCH_SIM_SCALE !== '0'
const HISTORY_SIGMA = 0.3
const HISTORY: Estimates = { kind: 'noisy', sigma: HISTORY_SIGMA }

/** What the tables compare: the three policies, meshbuild also with its history of build times. */
interface Variant { label: string, policy: PolicyName, estimates?: Estimates }
const VARIANTS: Variant[] = [
  { label: 'meshbuild', policy: 'meshbuild' },
  { label: 'meshbuild + history', policy: 'meshbuild', estimates: HISTORY },
  ...POLICIES.filter(p => p !== 'meshbuild').map(p => ({ label: p, policy: p }))
]
const DOC = process.env.BENCH_SIM_DOC ?? join(ROOT, 'docs/benchmarks.md')
const SVG_NAME = 'sim-messages.svg'
/** The 3-node sleep DAG is calibration, not scale: report.ts has it. */
const SWEPT_WORKLOADS = WORKLOADS.filter(w => w !== 'sleep')

const fx = (x: number, d = 2): string => x.toFixed(d)
const mean = (xs: number[]): number => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length)

function once (workload: WorkloadName, jobs: number, nodes: number, v: Variant, seed: number): SimResult {
  const r = simulate({ workload: generateWorkload(workload, jobs, seed), cluster: makeCluster(nodes, seed), policy: v.policy, seed, ...(v.estimates !== undefined ? { estimates: v.estimates } : {}) })
  process.stderr.write(`  sim ${workload} ${jobs}×${nodes} ${v.label} seed ${seed}: ${fx(r.ratio, 3)} × LB, ${fx(r.tightRatio, 3)} × tight, ${fx(r.messagesPerJob, 1)} messages/job, ${fx(r.wallMs / 1000, 1)} s\n`)
  return r
}

/** Mean (range) of a list of ratios. */
function spread (rr: number[]): string {
  return `${fx(mean(rr))} (${fx(Math.min(...rr))}–${fx(Math.max(...rr))})`
}

export interface MeshPoint { nodes: number, messagesPerJob: number, stealsPerJob: number }

/**
 * A line plot of messages and steals per job against nodes, both axes logarithmic (the two
 * series lie a decade apart), each point labelled with its value. No plotting dependency.
 */
export function messagesSvg (points: MeshPoint[], title: string): string {
  const W = 600
  const H = 360
  const L = 60
  const R = 130
  const T = 40
  const B = 50
  const xs = points.map(p => p.nodes)
  const ys = points.flatMap(p => [p.messagesPerJob, p.stealsPerJob]).filter(y => y > 0)
  // x: the data's span and a margin, ticks at the sizes run; y: whole decades.
  const x0 = Math.log10(Math.min(...xs)) - 0.15
  const x1 = Math.log10(Math.max(...xs)) + 0.15
  const y0 = Math.floor(Math.log10(Math.min(...ys)))
  const y1 = Math.ceil(Math.log10(Math.max(...ys)))
  const px = (x: number): number => L + (Math.log10(x) - x0) / (x1 - x0) * (W - L - R)
  const py = (y: number): number => H - B - (Math.log10(Math.max(y, 10 ** y0)) - y0) / Math.max(1, y1 - y0) * (H - T - B)
  const n = (v: number): string => v.toFixed(1)
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L}" y="22" font-size="14" font-weight="bold">${title}</text>`
  ]
  // Grid lines with their labels, then the axes' names.
  for (const x of xs) {
    out.push(`<line x1="${n(px(x))}" y1="${T}" x2="${n(px(x))}" y2="${H - B}" stroke="#ddd"/>`,
      `<text x="${n(px(x))}" y="${H - B + 16}" text-anchor="middle">${x.toLocaleString('en')}</text>`)
  }
  for (let e = y0; e <= y1; e++) {
    out.push(`<line x1="${L}" y1="${n(py(10 ** e))}" x2="${W - R}" y2="${n(py(10 ** e))}" stroke="#ddd"/>`,
      `<text x="${L - 6}" y="${n(py(10 ** e) + 4)}" text-anchor="end">${10 ** e >= 1 ? String(10 ** e) : (10 ** e).toFixed(-e)}</text>`)
  }
  out.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#888"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">nodes (log scale)</text>`,
    `<text x="16" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 ${(T + H - B) / 2})">per job (log scale)</text>`)
  const series: Array<{ name: string, colour: string, y: (p: MeshPoint) => number, digits: number }> = [
    { name: 'messages / job', colour: '#1f77b4', y: p => p.messagesPerJob, digits: 1 },
    { name: 'steals / job', colour: '#d62728', y: p => p.stealsPerJob, digits: 2 }
  ]
  series.forEach((s, i) => {
    const pts = points.map(p => `${n(px(p.nodes))},${n(py(s.y(p)))}`).join(' ')
    out.push(`<polyline points="${pts}" fill="none" stroke="${s.colour}" stroke-width="2"/>`)
    for (const p of points) {
      out.push(`<circle cx="${n(px(p.nodes))}" cy="${n(py(s.y(p)))}" r="3.5" fill="${s.colour}"/>`,
        `<text x="${n(px(p.nodes))}" y="${n(py(s.y(p)) - 8)}" text-anchor="middle" fill="${s.colour}" font-size="11">${s.y(p).toFixed(s.digits)}</text>`)
    }
    const ly = T + 14 + i * 20
    out.push(`<line x1="${W - R + 12}" y1="${ly - 4}" x2="${W - R + 32}" y2="${ly - 4}" stroke="${s.colour}" stroke-width="2"/>`,
      `<text x="${W - R + 38}" y="${ly}">${s.name}</text>`)
  })
  out.push('</svg>', '')
  return out.join('\n')
}

export async function run (): Promise<BenchRow[]> {
  const loadStart = loadAverage()
  const started = new Date()
  const t0 = performance.now()

  // 1. Every workload × policy, several seeds.
  const policyRows: BenchRow[] = []
  const ratios = new Map<string, number[]>()
  for (const w of SWEPT_WORKLOADS) {
    for (const v of VARIANTS) {
      const rs: SimResult[] = []
      for (let seed = 1; seed <= SEEDS; seed++) rs.push(once(w, JOBS, NODES, v, seed))
      const rr = rs.map(r => r.ratio)
      ratios.set(`${w} ${v.label}`, rr)
      policyRows.push({
        workload: w,
        policy: v.label,
        'makespan ÷ LB': fx(mean(rr)),
        range: `${fx(Math.min(...rr))}–${fx(Math.max(...rr))}`,
        'per seed': rr.map(x => fx(x)).join(', '),
        '÷ tight bound': fx(mean(rs.map(r => r.tightRatio))),
        'makespan s': fx(mean(rs.map(r => r.makespan)), 0),
        'LB s': fx(mean(rs.map(r => r.lowerBound)), 0),
        'messages/job': fx(mean(rs.map(r => r.messagesPerJob)), 1),
        'steals/job': fx(mean(rs.map(r => r.stealsPerJob))),
        'wall s': fx(mean(rs.map(r => r.wallMs)) / 1000, 1)
      })
    }
  }

  // 2. meshbuild as the mesh grows.
  const meshRows: BenchRow[] = []
  const points: MeshPoint[] = []
  for (const nodes of MESH_SIZES) {
    const r = once(MESH_WORKLOAD, MESH_JOBS, nodes, { label: 'meshbuild', policy: 'meshbuild' }, 1)
    points.push({ nodes, messagesPerJob: r.messagesPerJob, stealsPerJob: r.stealsPerJob })
    meshRows.push({
      nodes: nodes.toLocaleString('en'),
      'messages/job': fx(r.messagesPerJob, 1),
      'requests/job (no gossip)': fx((r.counters.messages - r.counters.gossipPublishes) / r.jobs, 1),
      'gossip publishes/job': fx(r.counters.gossipPublishes / r.jobs, 1),
      'steals/job': fx(r.stealsPerJob),
      'empty steals/job': fx(r.counters.emptySteals / r.jobs),
      'makespan ÷ LB': fx(r.ratio),
      'wall s': fx(r.wallMs / 1000, 1)
    })
  }
  // 3. The issue's scale targets.
  const scaleRows: BenchRow[] = []
  if (SCALE) {
    for (const v of VARIANTS) {
      const rs: SimResult[] = []
      for (let seed = 1; seed <= SEEDS; seed++) rs.push(once('nixpkgs', 10_000, 30, v, seed))
      scaleRows.push({
        run: '10,000 × 30', policy: v.label, 'makespan ÷ LB': spread(rs.map(r => r.ratio)), '÷ tight bound': spread(rs.map(r => r.tightRatio)),
        'messages/job': fx(mean(rs.map(r => r.messagesPerJob)), 1), 'wall s': fx(mean(rs.map(r => r.wallMs)) / 1000, 1)
      })
    }
    for (const v of VARIANTS.filter(x => x.policy === 'meshbuild')) {
      const r = once('nixpkgs', 100_000, 1_000, v, 1)
      scaleRows.push({
        run: '100,000 × 1,000', policy: v.label, 'makespan ÷ LB': fx(r.ratio), '÷ tight bound': fx(r.tightRatio),
        'messages/job': fx(r.messagesPerJob, 1), 'wall s': fx(r.wallMs / 1000, 1)
      })
    }
  }
  const wallS = (performance.now() - t0) / 1000
  const loadEnd = loadAverage()

  if (DOC !== 'none') {
    // The best policy's mean in bold on each row.
    const pivot = SWEPT_WORKLOADS.map(w => {
      const best = Math.min(...VARIANTS.map(v => Number(fx(mean(ratios.get(`${w} ${v.label}`) ?? [])))))
      return {
        workload: w,
        ...Object.fromEntries(VARIANTS.map(v => {
          const rr = ratios.get(`${w} ${v.label}`) ?? []
          const m = fx(mean(rr))
          return [v.label, `${Number(m) === best ? `**${m}**` : m} (${fx(Math.min(...rr))}–${fx(Math.max(...rr))})`]
        }))
      }
    })
    const seeds = SEEDS === 1 ? 'seed 1' : `mean (range) of seeds 1–${SEEDS}`
    const body = [
      wrap(`\`${commandLine(['BENCH_SIM_'])}\` on ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC, commit ${gitCommit(['bench/sim', 'node/scheduler'])}; ` +
        `machine: ${machine()}; load average ${loadStart} at the start, ${loadEnd} at the end; the sweep took ${fx(wallS, 0)} s of wall time.`),
      '',
      wrap(`**Makespan ÷ LB**, ${JOBS.toLocaleString('en')} jobs on ${NODES} nodes (speed factors drawn from ${DEFAULT_SPEEDS.join(', ')} and slots from ` +
        `${DEFAULT_SLOTS.join(', ')} per node; node 0, the submitter, 4 slots at speed 2), ${seeds}, the best in bold. ` +
        'LB = max(critical path at the fastest speed, work ÷ Σ slots × speed); costs from bench/sim/calibration.ts (daemon profile). ' +
        `"meshbuild + history": the owner knows each job's build time from earlier builds (\`--estimates noisy:${HISTORY_SIGMA}\`: ` +
        `off by a log-normal factor of σ ${HISTORY_SIGMA}, as a package's previous version); "meshbuild": a first build, no estimates.`),
      '',
      markdownTable(pivot, ['workload', ...VARIANTS.map(v => v.label)]),
      '',
      wrap('Each workload × policy, means over the seeds (messages: every message a node sends, a gossip publish counted once; steals: requests for work, central pull\'s polls included; ' +
        '"÷ tight bound": against a bound no schedule beats either, which adds to LB the wait for the head everything depends on, ' +
        'bench/sim/lower-bound.ts: the longest chain to a job at the fastest speed, then the work of its descendants over all capacity):'),
      '',
      markdownTable(policyRows, ['workload', 'policy', 'makespan ÷ LB', 'range', 'per seed', '÷ tight bound', 'makespan s', 'LB s', 'messages/job', 'steals/job', 'wall s']),
      ...(scaleRows.length > 0
        ? ['', wrap(`**Issue 10's scale targets**, nixpkgs-like: 10,000 jobs on 30 nodes, ${seeds} (target ≤ 1.10 × LB and below both baselines), ` +
          'and 100,000 jobs on 1,000 nodes, seed 1 (target ≤ 1.15 × LB, the simulation under 60 s of wall time):'), '',
          markdownTable(scaleRows, ['run', 'policy', 'makespan ÷ LB', '÷ tight bound', 'messages/job', 'wall s'])]
        : []),
      '',
      wrap(`**Messages and steals per job against mesh size**, meshbuild, ${MESH_WORKLOAD}, ${MESH_JOBS.toLocaleString('en')} jobs, seed 1 ` +
        `(from ${COALESCE_FROM_NODES} nodes on with coalesced gossip):`),
      '',
      markdownTable(meshRows, ['nodes', 'messages/job', 'requests/job (no gossip)', 'gossip publishes/job', 'steals/job', 'empty steals/job', 'makespan ÷ LB', 'wall s']),
      '',
      `![meshbuild's messages and steals per job against nodes, log–log](${SVG_NAME})`
    ].join('\n')
    await writeFile(join(dirname(DOC), SVG_NAME), messagesSvg(points, `meshbuild, ${MESH_WORKLOAD}, ${MESH_JOBS.toLocaleString('en')} jobs: per job against mesh size`))
    await writeBlock(DOC, 'sim', body, PLACES.sim)
    process.stderr.write(`sim: wrote the sim block of ${DOC} and ${SVG_NAME} (sweep ${fx(wallS, 0)} s)\n`)
  }
  return [
    ...policyRows.map(r => ({ table: `${JOBS}×${NODES}`, ...r })),
    ...scaleRows.map(r => ({ table: 'scale targets', ...r })),
    ...meshRows.map(r => ({ table: `mesh size, ${MESH_WORKLOAD}`, policy: 'meshbuild', ...r }))
  ]
}
