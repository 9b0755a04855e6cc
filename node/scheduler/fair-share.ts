// Fair shares between owners (Hydra's scheduling shares, per owner node): each owner announces
// its share weight (`join --share`) and how many slots build its jobs now (it holds their
// leases); an idle thief asks, among the owners offering work it can build, the one with the
// fewest slots per unit of share. Owners still fill their own slots first: thieves balance.
import { MAX_SHARE, MIN_SHARE } from '../../protocols/mesh/messages.ts'

/** The share of an owner that announces none (join without --share, or an older peer). */
export const DEFAULT_SHARE = 1

export class ShareError extends Error {
  override name = 'ShareError'
}

/** What a thief knows of an owner's use of the mesh, from its beacon. */
export interface OwnerUse {
  /** Slots building the owner's jobs (its own and peers'), as it last announced them. */
  ownerSlots?: number
  share?: number
}

/** Slots per unit of share: the owner lowest on this is furthest below its share. */
export function shareUse (o: OwnerUse): number {
  return (o.ownerSlots ?? 0) / (o.share ?? DEFAULT_SHARE)
}

/** A share weight from the command line: a number in MIN_SHARE..MAX_SHARE (0, negatives and NaN refused). */
export function parseShare (text: string | number): number {
  const n = typeof text === 'number' ? text : Number(text.trim() === '' ? NaN : text)
  if (!Number.isFinite(n) || n <= 0) throw new ShareError(`--share must be a positive number, not ${String(text)}`)
  if (n < MIN_SHARE || n > MAX_SHARE) throw new ShareError(`--share must be between ${MIN_SHARE} and ${MAX_SHARE}, not ${n}`)
  return n
}
