// The result protocol, both ends (wire contract: protocols/mesh/request-protocols.ts RESULT).
// 1. the worker writes {drvPath, ok, outputs | failure, buildMs?};
// 2. the owner replies {accepted}, then fetches the outputs over the nar protocol.
import { REPORT_LOG_LINE_CHARS, REPORT_LOG_TAIL_LINES } from '../../../protocols/mesh/constants.ts'
import type { ResultReport } from '../../../protocols/mesh/messages.ts'
import { RESULT } from '../../../protocols/mesh/request-protocols.ts'
import type { BuildOutcome, Decision, SchedulerEvent } from '../../scheduler/scheduler.ts'
import type { MeshNetwork } from '../network.ts'
import { request, serve, type RequestOptions, type Unserve } from '../rpc.ts'

export interface ResultServerPorts {
  dispatch: (event: SchedulerEvent) => Decision[]
  /** Whether this node owns a job of that derivation. */
  knows: (drvPath: string) => boolean
  /** A successful report's build time, once the scheduler has taken the report (it keeps what it accepted). */
  buildTime?: (from: string, drvPath: string, buildMs: number) => void
}

/** The owner's side: hands the worker's outcome to the scheduler. */
export async function serveResult (network: MeshNetwork, ports: ResultServerPorts): Promise<Unserve> {
  return await serve(network, RESULT, (from, report) => {
    const known = ports.knows(report.drvPath)
    ports.dispatch({ type: 'result', from, drvPath: report.drvPath, outcome: outcomeOf(report) })
    if (known && report.ok && report.buildMs !== undefined) ports.buildTime?.(from, report.drvPath, report.buildMs)
    return { accepted: known }
  })
}

/** The worker's side: tells `owner` how its job of `drvPath` went (and, built, how long the build took). */
export async function requestResult (network: MeshNetwork, owner: string, drvPath: string, outcome: BuildOutcome, buildMs?: number, options: RequestOptions = {}): Promise<{ accepted: boolean }> {
  return await request(network, owner, RESULT, reportOf(drvPath, outcome, buildMs), options)
}

function reportOf (drvPath: string, outcome: BuildOutcome, buildMs: number | undefined): ResultReport {
  return outcome.ok
    ? {
        drvPath, ok: true, outputs: outcome.outputs,
        ...(outcome.narHashes !== undefined ? { narHashes: outcome.narHashes } : {}),
        ...(buildMs !== undefined ? { buildMs } : {})
      }
    : { drvPath, ok: false, failure: { ...outcome.failure, logTail: outcome.failure.logTail?.slice(-REPORT_LOG_TAIL_LINES).map(l => l.slice(0, REPORT_LOG_LINE_CHARS)) } }
}

function outcomeOf (report: ResultReport): BuildOutcome {
  if (report.ok) return { ok: true, outputs: report.outputs ?? {}, ...(report.narHashes !== undefined ? { narHashes: report.narHashes } : {}) }
  return { ok: false, failure: report.failure ?? { kind: 'transient', message: 'worker gave no reason' } }
}
