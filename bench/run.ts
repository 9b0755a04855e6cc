// `npm run bench`: runs each benchmark module in turn and prints its rows as a table.
// A benchmark module exports `run(): Promise<BenchRow[]>`; add new ones to the list below.

export type BenchRow = Record<string, string | number>

interface BenchModule { run: () => Promise<BenchRow[]> }

const benches: Array<{ name: string, load: () => Promise<BenchModule> }> = [
  { name: 'nar', load: async () => await import('./nar.ts') },
  { name: 'cache', load: async () => await import('./cache.ts') },
  { name: 'mesh', load: async () => await import('./mesh.ts') },
  { name: 'sim', load: async () => await import('./sim-report.ts') },
  { name: 'targets', load: async () => await import('./targets.ts') },
  { name: 'signer', load: async () => await import('./signer.ts') },
  { name: 'store', load: async () => await import('./store.ts') },
  { name: 'builder', load: async () => await import('./builder.ts') }
]

const only = process.argv.slice(2)
let failed = false
for (const bench of benches) {
  if (only.length > 0 && !only.includes(bench.name)) continue
  process.stdout.write(`\n== ${bench.name}\n`)
  try {
    const rows = await (await bench.load()).run()
    console.table(rows)
  } catch (err) {
    failed = true
    process.stderr.write(`bench ${bench.name} failed: ${(err as Error).stack ?? String(err)}\n`)
  }
}
process.exitCode = failed ? 1 : 0
