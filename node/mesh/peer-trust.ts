// Which keys a peer's paths must be signed with to enter this store (docs/decisions.md, trust).
import { parsePublicKey, type PublicKey } from '../../protocols/nix/signing-key.ts'
import type { PathTrust } from '../../protocols/mesh/path-trust.ts'
import type { PeerTable } from './peer-table.ts'

export interface PeerTrustInit {
  /** This node's own key. */
  own: PublicKey
  /** From --trusted-keys; when given, these (and `own`) only. */
  trustedKeys?: PublicKey[]
  peers: PeerTable
}

/**
 * The keys a peer's paths must be signed with to enter this store: this node's own and those
 * of --trusted-keys when given; otherwise this node's own and the key the peer announces.
 */
export function peerTrust (init: PeerTrustInit, peerId: string): PathTrust {
  const own = init.own
  if (init.trustedKeys !== undefined) return { keys: [own, ...init.trustedKeys], policy: '--trusted-keys and this node\'s own key' }
  const announced = init.peers.get(peerId)?.beacon.signingKey
  const keys = [own]
  if (announced !== undefined) {
    try {
      keys.push(parsePublicKey(announced))
    } catch {}
  }
  return { keys, policy: announced === undefined ? `this node's own key (${peerId} has announced none yet)` : `the key ${peerId} announces` }
}
