// Which store paths a node accepts from a peer: one rule, used by the signer for offers, by an
// owner for a worker's outputs and by a thief for an owner's inputs. A path is accepted only with
// a valid Nix signature (the fingerprint of path, NarHash, NarSize and references) by a key the
// node trusts; which keys those are is decided by the caller from the node's own configuration
// (its --trusted-keys, its own key) or from the serving member's beacon, never from the message.
import { Hash } from '../nix/hash.ts'
import { checkDetached, fingerprint, signDetached, type SignatureFailure } from '../nix/signature.ts'
import type { PublicKey, SecretKey } from '../nix/signing-key.ts'
import { MAX_PATH_SIGNATURES } from './constants.ts'
import type { PathInfoMessage } from './messages.ts'
import { storePathBaseName } from '../nix/store-path.ts'

/** A peer served a path that no trusted key vouches for; nothing of its reply was imported. */
export class UntrustedPath extends Error {
  override name = 'UntrustedPath'
}

/** The keys a node accepts a peer's paths under, and how it chose them (for messages). */
export interface PathTrust {
  keys: PublicKey[]
  policy: string
}

/** Why no signature of `info` verifies with a key of `trust`, or undefined when one does. */
export function signatureProblem (info: PathInfoMessage, trust: PathTrust): string | undefined {
  const sigs = info.signatures ?? []
  if (sigs.length === 0) return 'it carries no signature'
  let fp: string
  try {
    fp = infoFingerprint(info)
  } catch (err) {
    return `its metadata is malformed: ${(err as Error).message}`
  }
  const failures: SignatureFailure[] = []
  for (const sig of sigs) {
    const check = checkDetached(fp, sig, trust.keys)
    if (check.ok) return undefined
    failures.push(check)
  }
  const untrusted = failures.filter(f => f.problem === 'untrusted-key').map(f => f.keyName)
  const invalid = failures.filter(f => f.problem === 'invalid').map(f => f.keyName)
  if (invalid.length > 0) return `its signature by ${invalid.join(', ')} does not match its NarHash, NarSize and references`
  if (untrusted.length > 0) return `signed only by untrusted key(s) ${untrusted.join(', ')} (trusting ${trust.policy}: ${trust.keys.map(k => k.name).join(', ') || 'none'})`
  return 'its signatures are malformed'
}

/** Throws UntrustedPath naming the first path of `infos` no trusted key vouches for. */
export function requireTrusted (infos: readonly PathInfoMessage[], trust: PathTrust, peer: string): void {
  for (const info of infos) {
    const why = signatureProblem(info, trust)
    if (why !== undefined) throw new UntrustedPath(`${peer} served ${info.path}, refused: ${why}`)
  }
}

/**
 * `info` with this node's signature added, as it is served to a peer: the receiver then knows
 * the serving node vouches for it. Existing signatures are kept, as many as the message allows.
 */
export function signServed (info: PathInfoMessage, key: SecretKey): PathInfoMessage {
  let sig: string
  try {
    sig = signDetached(infoFingerprint(info), key)
  } catch {
    return info // no NAR size known: nothing to vouch for, and the receiver refuses it
  }
  const others = (info.signatures ?? []).filter(s => s !== sig).slice(0, MAX_PATH_SIGNATURES - 1)
  return { ...info, signatures: [sig, ...others] }
}

/** The fingerprint Nix signs (ValidPathInfo::fingerprint) of a path info as it crosses the wire. */
function infoFingerprint (info: PathInfoMessage): string {
  return fingerprint({ storePath: info.path, narHash: Hash.parse(info.narHash), narSize: info.narSize, references: info.references.map(r => storePathBaseName(r)) })
}
