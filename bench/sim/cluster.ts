// The virtual machines of a simulated mesh: slots, speed factor, systems and features, drawn
// from a seed. Node 0 is the submitter (the owner, the hook's local machine, the pull server).
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import { seededRandom } from '../../node/scheduler/random.ts'
import { BIG_FEATURE, SIM_SYSTEM } from './workloads.ts'

export interface SimNodeSpec {
  index: number
  /** Its peer id in the mesh; sorts as the index does. */
  id: string
  slots: number
  speedFactor: number
  capabilities: MachineCapabilities
}

export interface ClusterOptions {
  /** Speed factors drawn uniformly from this list (issue 10: 1 to 4). */
  speeds?: readonly number[]
  /** Slot counts drawn uniformly from this list. */
  slots?: readonly number[]
}

export const DEFAULT_SPEEDS = [1, 2, 3, 4] as const
export const DEFAULT_SLOTS = [2, 4, 8] as const
/** The submitter's own machine: a middling one, with every feature, so every job has a home. */
const SUBMITTER_SLOTS = 4
const SUBMITTER_SPEED = 2
/** Machines with at least this many slots also take `big-parallel` jobs. */
const BIG_MACHINE_SLOTS = 8

export class ClusterError extends Error {
  override name = 'ClusterError'
}

export function peerIdOf (index: number): string {
  return `sim-node-${String(index).padStart(5, '0')}`
}

export function makeCluster (nodes: number, seed: number, options: ClusterOptions = {}): SimNodeSpec[] {
  if (!Number.isInteger(nodes) || nodes < 1) throw new ClusterError(`a mesh has at least one node, not ${nodes}`)
  const speeds = options.speeds ?? DEFAULT_SPEEDS
  const slots = options.slots ?? DEFAULT_SLOTS
  if (speeds.length === 0 || slots.length === 0) throw new ClusterError('speeds and slots must each list at least one value')
  const uniform = speeds.length === 1 && slots.length === 1
  const random = seededRandom((seed ^ 0x2545f491) >>> 0)
  const out: SimNodeSpec[] = []
  for (let i = 0; i < nodes; i++) {
    const s = i === 0 && !uniform ? Math.min(SUBMITTER_SLOTS, Math.max(...slots)) : slots[Math.floor(random() * slots.length)] as number
    const v = i === 0 && !uniform ? Math.min(SUBMITTER_SPEED, Math.max(...speeds)) : speeds[Math.floor(random() * speeds.length)] as number
    const big = i === 0 || s >= BIG_MACHINE_SLOTS
    out.push({
      index: i,
      id: peerIdOf(i),
      slots: s,
      speedFactor: v,
      capabilities: { systems: [SIM_SYSTEM], features: big ? [BIG_FEATURE] : [], mandatoryFeatures: [] }
    })
  }
  return out
}
