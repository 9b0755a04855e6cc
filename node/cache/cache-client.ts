// Using a binary cache as a client: asking which paths it has (HEAD <hash>.narinfo), and bringing
// paths into the local store with Nix's own substitution, which checks the cache's signature.
import { storePathHashPart } from '../../protocols/nix/store-path.ts'
import { execText } from '../nix/exec.ts'

export interface CacheRef {
  url: string
  /** The cache's public key, `name:base64`. */
  publicKey: string
}

const LOOKUP_TIMEOUT_MS = 5_000
const PARALLEL_LOOKUPS = 16

/** Which of `paths` the cache has a narinfo for. Unreachable caches have nothing. */
export async function cachedPaths (cache: CacheRef, paths: string[]): Promise<Set<string>> {
  const found = new Set<string>()
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < paths.length) {
      const path = paths[next++]
      if (path === undefined) break
      try {
        const res = await fetch(`${cache.url}/${storePathHashPart(path)}.narinfo`, { method: 'HEAD', signal: AbortSignal.timeout(LOOKUP_TIMEOUT_MS) })
        if (res.ok) found.add(path)
      } catch {}
    }
  }
  await Promise.all(Array.from({ length: Math.min(PARALLEL_LOOKUPS, paths.length) }, worker))
  return found
}

/** Substitutes `paths` (and their closures) from the cache into the local store. */
export async function substituteFrom (cache: CacheRef, paths: string[], signal?: AbortSignal): Promise<void> {
  if (paths.length === 0) return
  await execText('nix-store', ['--realise', ...paths], {
    settings: { substituters: [cache.url], trustedPublicKeys: [cache.publicKey] },
    ...(signal !== undefined ? { signal } : {})
  })
}
