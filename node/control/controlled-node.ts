// What the control server needs of a running node: the port MeshNode implements (tests serve a
// stub). Declared here so that node/control/ does not depend on the concrete node class.
import type { StatusReport, SubmissionReport } from '../mesh/reports.ts'
import type { ControlRequest } from './control-protocol.ts'
import type { LogFrame } from '../../protocols/mesh/messages.ts'

/** A submission's options as the control API carries them. */
export type ControlSubmitOptions = Omit<Extract<ControlRequest, { op: 'submit' }>, 'op' | 'drvPaths'>

export interface ControlledNode {
  /** Plans and queues a submission; resolves to its id. */
  submit (drvPaths: string[], options: ControlSubmitOptions): Promise<string>
  status (): StatusReport
  submissionReport (id: string): SubmissionReport | undefined
  /** Calls `listener` on every change of the submission; returns the unsubscribe function. */
  watch (id: string, listener: (report: SubmissionReport) => void): () => void
  // The log methods are optional so that test stubs of the other ops need not implement them;
  // a node without them answers log requests with an error.
  /** The derivation a .drv or output path names, when the node knows it. */
  derivationOf? (path: string): Promise<string | undefined>
  /** A build's log frames from wherever it is; the last is an end frame. */
  readLog? (drvPath: string, follow: boolean, signal: AbortSignal): AsyncIterable<LogFrame & { from?: string }>
  /**
   * The lines of the submission's builds as they are written; after `stop` the builds being read
   * are read to their end, `cancel` ends everything.
   */
  watchLogs? (id: string, onLines: (drvPath: string, lines: string[]) => void, stop: AbortSignal, cancel: AbortSignal): Promise<void>
}
