// A store's PathInfo as it crosses the wire (PathInfoMessage): the one conversion, used by the
// path-info server, the signer's offers and the owner's NAR source.
import type { PathInfoMessage } from '../../protocols/mesh/messages.ts'
import type { PathInfo } from './store-backend.ts'

export function toMessage (info: PathInfo): PathInfoMessage {
  return {
    path: info.path,
    narHash: info.narHash.toNix32(),
    narSize: info.narSize,
    references: info.references,
    ...(info.deriver !== undefined ? { deriver: info.deriver } : {}),
    signatures: info.signatures,
    ...(info.ca !== undefined ? { ca: info.ca } : {})
  }
}
