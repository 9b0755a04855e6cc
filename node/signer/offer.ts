// What a worker offers the signer: the outputs it built and the content-addressed paths (sources)
// of their closure, each with a signature by the worker's own key. Outputs of other derivations
// in the closure are left to the workers that built them: a worker vouches only for its own builds.
import { fingerprint, signDetached } from '../../protocols/nix/signature.ts'
import { storePathBaseName } from '../../protocols/nix/store-path.ts'
import type { PathInfoMessage } from '../../protocols/mesh/messages.ts'
import type { PathInfo, StoreBackend } from '../nix/store-backend.ts'
import { toMessage } from '../nix/path-info-message.ts'
import type { NodeKey } from './node-key.ts'

/** The fingerprint of a path as Nix signs it. */
export function pathFingerprint (info: Pick<PathInfo, 'path' | 'narHash' | 'narSize' | 'references'>): string {
  return fingerprint({
    storePath: info.path,
    narHash: info.narHash,
    narSize: info.narSize,
    references: info.references.map(r => storePathBaseName(r))
  })
}

export async function buildOffer (store: StoreBackend, key: NodeKey, roots: string[]): Promise<PathInfoMessage[]> {
  const valid = await store.isValid(roots)
  const present = roots.filter(r => valid.has(r))
  if (present.length === 0) return []
  const closure = await store.closure(present)
  const infos = await store.queryPathInfos(closure)
  const mine = new Set(present)
  const offer: PathInfoMessage[] = []
  for (const path of closure) {
    const info = infos.get(path)
    if (info === undefined || (!mine.has(path) && info.ca === undefined)) continue
    const sig = signDetached(pathFingerprint(info), key.secret)
    offer.push({ ...toMessage(info), signatures: [...new Set([...info.signatures, sig])] })
  }
  return offer
}
