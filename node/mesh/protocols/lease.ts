// The lease protocol, both ends (wire contract: protocols/mesh/request-protocols.ts LEASE).
// 1. the worker writes {renew, release?}: jobs it still builds, jobs it gives back;
// 2. the owner replies {lost}: renewed jobs whose lease the worker no longer holds.
import { randomUUID } from 'node:crypto'
import type { LeaseReply } from '../../../protocols/mesh/messages.ts'
import { LEASE } from '../../../protocols/mesh/request-protocols.ts'
import type { Decision, SchedulerEvent } from '../../scheduler/scheduler.ts'
import type { Logger } from '../../log.ts'
import type { MeshNetwork } from '../network.ts'
import { request, serve, type RequestOptions, type Unserve } from '../rpc.ts'

export interface LeaseServerPorts {
  dispatch: (event: SchedulerEvent) => Decision[]
  log: Logger
}

/** The owner's side: takes back released jobs, renews the rest or says which are lost. */
export async function serveLease (network: MeshNetwork, ports: LeaseServerPorts): Promise<Unserve> {
  return await serve(network, LEASE, (from, req) => {
    if (req.release !== undefined && req.release.length > 0) {
      ports.log.info(`${from} gave back ${req.release.length} job(s)`)
      ports.dispatch({ type: 'lease-release', from, drvPaths: req.release })
    }
    const requestId = randomUUID()
    const decisions = ports.dispatch({ type: 'lease-renew', requestId, from, drvPaths: req.renew })
    const reply = decisions.find(d => d.type === 'renew-reply' && d.requestId === requestId)
    return { lost: reply?.type === 'renew-reply' ? reply.lost : req.renew }
  })
}

/** The worker's side: renews the leases of `renew` and gives `release` back to `owner`. */
export async function requestLease (network: MeshNetwork, owner: string, renew: string[], release: string[] | undefined, options: RequestOptions = {}): Promise<LeaseReply> {
  return await request(network, owner, LEASE, { renew, ...(release !== undefined ? { release } : {}) }, options)
}
