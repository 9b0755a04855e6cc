// What the control server needs of a running node: the port MeshNode implements (tests serve a
// stub). Declared here so that node/control/ does not depend on the concrete node class.
import type { StatusReport, SubmissionReport } from '../mesh/reports.ts'
import type { ControlRequest } from './control-protocol.ts'

/** A submission's options as the control API carries them. */
export type ControlSubmitOptions = Omit<Extract<ControlRequest, { op: 'submit' }>, 'op' | 'drvPaths'>

export interface ControlledNode {
  /** Plans and queues a submission; resolves to its id. */
  submit (drvPaths: string[], options: ControlSubmitOptions): Promise<string>
  status (): StatusReport
  submissionReport (id: string): SubmissionReport | undefined
  /** Calls `listener` on every change of the submission; returns the unsubscribe function. */
  watch (id: string, listener: (report: SubmissionReport) => void): () => void
}
