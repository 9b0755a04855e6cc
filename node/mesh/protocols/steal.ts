// The steal protocol, both ends (wire contract: protocols/mesh/request-protocols.ts STEAL).
// 1. the thief writes {want, systems, features, mandatoryFeatures};
// 2. the owner replies {leaseMs, items}: jobs now leased to the thief, possibly none.
import { randomUUID } from 'node:crypto'
import { MAX_STEAL_WANT } from '../../../protocols/mesh/constants.ts'
import type { StealGrant } from '../../../protocols/mesh/messages.ts'
import { STEAL } from '../../../protocols/mesh/request-protocols.ts'
import type { MachineCapabilities } from '../../scheduler/matching.ts'
import type { Decision, SchedulerEvent } from '../../scheduler/scheduler.ts'
import type { Logger } from '../../log.ts'
import type { MeshNetwork } from '../network.ts'
import { request, serve, type RequestOptions, type Unserve } from '../rpc.ts'

export interface StealServerPorts {
  dispatch: (event: SchedulerEvent) => Decision[]
  leaseMs: () => number
  log: Logger
}

/** The owner's side: lends the thief what the scheduler grants. */
export async function serveSteal (network: MeshNetwork, ports: StealServerPorts): Promise<Unserve> {
  return await serve(network, STEAL, (from, req) => {
    const requestId = randomUUID()
    const decisions = ports.dispatch({
      type: 'steal-request', requestId, from, want: req.want,
      capabilities: { systems: req.systems, features: req.features, mandatoryFeatures: req.mandatoryFeatures }
    })
    const grant = decisions.find(d => d.type === 'grant' && d.requestId === requestId)
    const items = grant?.type === 'grant' ? grant.items : []
    if (items.length > 0) ports.log.info(`lent ${items.length} job(s) to ${from}`)
    return { leaseMs: ports.leaseMs(), items: items.map(({ owner: _owner, ...rest }) => rest) }
  })
}

/** The thief's side: asks `owner` for up to `want` jobs this machine can build. */
export async function requestSteal (network: MeshNetwork, owner: string, want: number, caps: MachineCapabilities, options: RequestOptions = {}): Promise<StealGrant> {
  return await request(network, owner, STEAL, {
    want: Math.min(want, MAX_STEAL_WANT), systems: [...caps.systems], features: [...caps.features], mandatoryFeatures: [...caps.mandatoryFeatures]
  }, options)
}
