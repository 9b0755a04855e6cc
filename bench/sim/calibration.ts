// The simulator's costs, in one place, each with where its number comes from. Times in ms,
// sizes in bytes, rates in bytes per ms. The mesh's own intervals (beacon, tick, lease, back-off)
// are not here: the simulator imports them from protocols/mesh/constants.ts and the scheduler's
// SCHEDULER_DEFAULTS, so it runs with the numbers the real node runs with.
//
// Two profiles. `daemon` (the default) is the store layer of issue 9 (the Nix daemon's worker
// protocol): its figures come from issue 9's measurements against a running nix-daemon and from
// docs/benchmarks.md, as named per constant; where neither gives a number, the constant says
// "assumption" and why the value is plausible. `cli-trace` is the mesh as it runs today (CLI
// store backend, one nix-store process per operation), from the `join --trace` files of one
// quiet run of the sleep DAG on 3 test hosts × 2 slots (2026-12-02 21:55 UTC:
// `BENCH_TRACE_DIR=… BENCH_TARGETS=sleep BENCH_TARGETS_RUNS=3 node --import
// ./test/helpers/nix-test-env.ts bench/targets.ts`, then `node bench/sim/calibrate.ts` on the
// traces: medians over 79 stolen jobs); bench/sim/calibrate.ts makes such a profile from any
// run's traces (`npm run sim -- --calibration-file`).
import { REPLY_TIMEOUT_MS } from '../../protocols/mesh/constants.ts'

const DAEMON = {
  /**
   * One-way latency of one message between two nodes on a LAN, including libp2p's framing and
   * JSON. Assumption: a switched gigabit LAN is 0.1–0.3 ms; yamux, Noise and JSON of a small
   * message add a few hundred µs in Node. Jittered by ±50 %.
   */
  oneWayMs: 0.5,
  /**
   * Time a node spends answering a request stream (open the stream on the existing connection,
   * parse, run the scheduler, write): the part of a steal or lease round trip that is not the
   * wire. Assumption: issue 9 measures a running daemon's round trip at 0.1–0.2 ms; a libp2p
   * stream open adds a round trip of its own, hence 1 ms.
   */
  requestServiceMs: 1,
  /**
   * Gossipsub's mesh degree D (its default): a message reaches 6 peers in one hop, 36 in two, …
   * so a publish reaches N peers after about log6(N) hops of oneWayMs each.
   */
  gossipFanout: 6,
  /**
   * NAR bytes a node sends per ms (its uplink; transfers from one node queue behind each other).
   * Assumption: 1 Gbit/s ≈ 125 MB/s; the raw NAR stream between test hosts reached 179 MiB/s
   * (docs/benchmarks.md, signer rows), so the wire, not the codec, is the limit on a real LAN.
   */
  narBytesPerMs: 125_000,
  /**
   * Fixed cost of importing one path into the local store through the daemon: issue 9,
   * "AddToStoreNar of a small path ≈ 2 ms, measured here against Nix 2.8".
   */
  importPerPathMs: 2,
  /**
   * Import throughput once the bytes are here: docs/benchmarks.md, `nix-store --restore` of the
   * 1 GiB tree at 1029 MiB/s (restore is the bulk of an import: hashing and writing).
   */
  importBytesPerMs: 1_000_000,
  /**
   * Start-up cost of one build in a slot, beside the builder's own work: issue 9,
   * `nix-store --realise -j 6` built 60 zero-length derivations in 0.65 s on one host, i.e.
   * 6 slots × 0.65 s / 60 ≈ 65 ms of slot time per derivation (sandbox, build user, registering).
   */
  buildStartupMs: 65,
  /** Size of one .drv file sent with a stolen job. Assumption: a typical .drv is 1–4 KiB. */
  drvBytes: 2_000,
  /**
   * A request to a node that died unannounced fails after this long (no FIN arrives from a
   * crashed host, so the request waits out its reply timeout): protocols/mesh/constants.ts.
   */
  deadPeerTimeoutMs: REPLY_TIMEOUT_MS,

  // --- the baselines --------------------------------------------------------------------------

  /**
   * Static hook: the cost of one remote build's session beside its transfers: Nix starts
   * `nix __build-remote` for the derivation and, over SSH, a remote `nix-daemon --stdio`; issue 9
   * measures each Nix process at 27–30 ms, hence 2 × 30 ms (SSH with a ControlMaster assumed,
   * so no key exchange per build).
   */
  hookSessionMs: 60,
  /**
   * Static hook: a postponed derivation (no machine free, and this one cannot build it locally)
   * is tried again after `build-poll-interval`, 5 s by default (Nix 2.8 src/libstore/globals.hh).
   */
  hookPollMs: 5_000,
  /** Central pull: an idle worker asks for work every second (issue 10, as Cuirass's remote worker). */
  pullIntervalMs: 1_000,
  /**
   * Central pull: the server gives up on a silent worker and queues its builds again after
   * Cuirass's `%worker-timeout`, 120 s (src/cuirass/remote.scm).
   */
  pullWorkerTimeoutMs: 120_000,
  /** Fixed cost of one fetch of a stolen job's .drv and inputs beside its round trips and imports: none with the daemon. */
  fetchOverheadMs: 0,
  /** Fixed cost of the owner's fetch of a worker's outputs beside round trip and import: none with the daemon. */
  importOverheadMs: 0
}

export type Calibration = { readonly [K in keyof typeof DAEMON]: number }

/** The traced mesh of 2026-12-02, CLI store backend (see the head of this file). */
const CLI_TRACE: Calibration = {
  ...DAEMON,
  /**
   * steal-asked → granted: median 5.4 ms (loopback test hosts), less the two one-way latencies.
   * (An earlier trace of the zero-length DAG, with two test runs sharing the cores, read 39 ms.)
   */
  requestServiceMs: 4.4,
  /** granted → inputs-fetched: median 157 ms, less the round trip and two path imports (loaded: 775 ms). */
  fetchOverheadMs: 147.5,
  /** result-received → outputs-imported: median 114 ms, less the round trip and one import (loaded: 404 ms). */
  importOverheadMs: 106.4
  // buildStartupMs stays 65 ms: the trace's shortest sleep builds (sleeping 0 s) took 33–64 ms.
}

export const CALIBRATIONS = { daemon: DAEMON, 'cli-trace': CLI_TRACE } as const satisfies Record<string, Calibration>
export type CalibrationName = keyof typeof CALIBRATIONS
/** The default profile, for code that needs a constant outside a run. */
export const CALIBRATION: Calibration = DAEMON
