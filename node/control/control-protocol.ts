// The local control API: newline-delimited JSON over a Unix socket in the data directory
// (mode 0600, so only the node's user can drive it). One request per connection:
//   {op:'submit', drvPaths, priority, timeout?, maxSilentTime?} -> {ok, id} | {ok:false, error}
//   {op:'status'}                                              -> {ok, status}
//   {op:'submission', id}                                      -> {ok, report}
//   {op:'watch', id}             -> {ok, report} on every change, the last one with report.state != 'running'
import type { StatusReport, SubmissionReport } from '../mesh/reports.ts'

export const CONTROL_SOCKET = 'control.sock'

export type ControlRequest =
  | { op: 'submit', drvPaths: string[], priority: number, timeout?: number, maxSilentTime?: number }
  | { op: 'status' }
  | { op: 'submission', id: string }
  | { op: 'watch', id: string }

export type ControlReply =
  | { ok: true, id: string }
  | { ok: true, status: StatusReport }
  | { ok: true, report: SubmissionReport }
  | { ok: false, error: string, errorName: string }
