// Parsed .drv files, kept a while: a store path's contents never change, and one job's path
// reads the same .drv several times (the owner naming its inputs, the thief checking them, the
// builder naming its outputs). A file that cannot be read or parsed is not kept.
import { readDerivation, type Derivation } from '../../protocols/nix/derivation.ts'

/** Enough for the jobs in flight and their inputs; each entry is a few KiB. */
export const DERIVATION_CACHE_ENTRIES = 1024

const cache = new Map<string, Derivation>()

export async function readDerivationCached (path: string, options: { signal?: AbortSignal } = {}): Promise<Derivation> {
  const hit = cache.get(path)
  if (hit !== undefined) {
    // Map order is insertion order: re-inserting makes it the most recently used.
    cache.delete(path)
    cache.set(path, hit)
    return hit
  }
  const drv = await readDerivation(path, options)
  cache.set(path, drv)
  if (cache.size > DERIVATION_CACHE_ENTRIES) cache.delete(cache.keys().next().value as string)
  return drv
}
