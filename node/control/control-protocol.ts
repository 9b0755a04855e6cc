// The local control API: newline-delimited JSON over a Unix socket in the data directory
// (mode 0600, so only the node's user can drive it). One request per connection:
//   {op:'submit', drvPaths, priority, timeout?, maxSilentTime?, checkReproducible?} -> {ok, id} | {ok:false, error}
//   {op:'status'}                                              -> {ok, status}
//   {op:'submission', id}                                      -> {ok, report}
//   {op:'watch', id, logs?}      -> {ok, report} on every change, the last one with report.state != 'running';
//                                   with logs, also {ok, logLines:{drvPath, lines}} as the builds write them
//   {op:'log', path, follow?}    -> {ok, log:{lines, from?}}..., then {ok, logEnd:{found, outcome, from?, skippedBytes?}};
//                                   {ok:false, errorName:'UnknownDerivation'|'NoBuildLog'} when there is none
// Every request is checked field by field (validateControlRequest) with the same schema code as
// the wire messages; a bad one is answered {ok:false, errorName:'BadRequest'} naming the field.
import type { StatusReport, SubmissionReport } from '../mesh/reports.ts'
import { arr, bool, int, literal, obj, oneOf, optional, SchemaError, str, type Check } from '../../protocols/mesh/schema.ts'
import { isDerivation, parseStorePath } from '../../protocols/nix/store-path.ts'

export const CONTROL_SOCKET = 'control.sock'

export const MIN_PRIORITY = 0
export const MAX_PRIORITY = 9
/** Longest --timeout / --max-silent-time a submission may ask for: a week, in seconds. */
export const MAX_BUILD_SECONDS = 7 * 24 * 3600
/** Most derivations one submission may list (its dependencies are not counted). */
export const MAX_SUBMIT_DRVS = 100_000
/** Longest store path Nix allows: /nix/store/ + 32 + '-' + 211. */
const MAX_STORE_PATH_CHARS = 255
/** Submission ids are `YYYYMMDDTHHMMSS-xxxxxxxx`; allow some room, nothing else. */
const MAX_ID_CHARS = 64
const ID_PATTERN = /^[A-Za-z0-9._-]+$/
export const CONTROL_OPS = ['submit', 'status', 'submission', 'watch', 'log'] as const

export type ControlRequest =
  | { op: 'submit', drvPaths: string[], priority: number, timeout?: number, maxSilentTime?: number, checkReproducible?: boolean }
  | { op: 'status' }
  | { op: 'submission', id: string }
  | { op: 'watch', id: string, logs?: boolean }
  | { op: 'log', path: string, follow?: boolean }

export type ControlReply =
  | { ok: true, id: string }
  | { ok: true, status: StatusReport }
  | { ok: true, report: SubmissionReport }
  | { ok: true, logLines: { drvPath: string, lines: string[] } }
  | { ok: true, log: { lines: string[], from?: string } }
  | { ok: true, logEnd: LogEnd }
  | { ok: false, error: string, errorName: string }

/** The last reply of a log request: whether a log was found, how its build ended, where it came from. */
export interface LogEnd {
  found: boolean
  outcome: 'built' | 'failed' | 'unknown'
  /** The peer that sent it; absent: this node's own file. */
  from?: string
  /** Bytes of the log not shown (the start of a long one). */
  skippedBytes?: number
}

/** A request the control server cannot act on; answered with errorName 'BadRequest'. */
export class BadRequest extends Error {
  override name = 'BadRequest'
}

const drvPath: Check<string> = (v, where) => {
  const path = str(MAX_STORE_PATH_CHARS)(v, where)
  try {
    parseStorePath(path)
  } catch (err) {
    throw new SchemaError(`${where}: not a store path (${(err as Error).message})`)
  }
  if (!isDerivation(path)) throw new SchemaError(`${where}: not a derivation (a .drv store path)`)
  return path
}

const drvPaths: Check<string[]> = (v, where) => {
  const list = arr(drvPath, MAX_SUBMIT_DRVS)(v, where)
  if (list.length === 0) throw new SchemaError(`${where}: names no derivation`)
  return list
}

const id = str(MAX_ID_CHARS, ID_PATTERN)
const seconds = optional(int(1, MAX_BUILD_SECONDS))

const checkSubmit = obj({
  op: literal('submit'),
  drvPaths,
  priority: int(MIN_PRIORITY, MAX_PRIORITY),
  timeout: seconds,
  maxSilentTime: seconds,
  checkReproducible: optional(bool)
})
const checkStatus = obj({ op: literal('status') })
const checkById = obj({ op: oneOf(['submission', 'watch'] as const), id, logs: optional(bool) })
const storePath: Check<string> = (v, where) => {
  const path = str(MAX_STORE_PATH_CHARS)(v, where)
  try {
    parseStorePath(path)
  } catch (err) {
    throw new SchemaError(`${where}: not a store path (${(err as Error).message})`)
  }
  return path
}
const checkLog = obj({ op: literal('log'), path: storePath, follow: optional(bool) })

/** Parses and checks one request line; throws BadRequest naming the first bad field. */
export function validateControlRequest (line: string): ControlRequest {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch (err) {
    throw new BadRequest(`request: not JSON (${(err as Error).message})`)
  }
  try {
    const op = obj({ op: oneOf(CONTROL_OPS) })(value, 'request').op
    switch (op) {
      case 'submit': return checkSubmit(value, 'request')
      case 'status': return checkStatus(value, 'request')
      case 'submission':
      case 'watch': {
        const r = checkById(value, 'request')
        return r.op === 'watch' && r.logs === true ? { op: r.op, id: r.id, logs: true } : { op: r.op, id: r.id }
      }
      case 'log': return checkLog(value, 'request')
    }
  } catch (err) {
    if (err instanceof SchemaError) throw new BadRequest(err.message)
    throw err
  }
}
