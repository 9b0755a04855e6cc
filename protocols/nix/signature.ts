// Nix path signatures: ed25519 over a path's *fingerprint*, written `keyname:base64(sig)`.
// The fingerprint is ValidPathInfo::fingerprint of Nix 2.8:
//   1;<storePath>;<narHash as algo:nix32>;<narSize>;<full reference paths, sorted, comma-joined>
import * as ed from '@noble/ed25519'
import { createPrivateKey, sign, type KeyObject } from 'node:crypto'
import type { Hash } from './hash.ts'
import type { NarInfo } from './narinfo.ts'
import { sortedUnique } from './narinfo.ts'
import { SEED_BYTES, SIGNATURE_BYTES, type PublicKey, type SecretKey, decodeBase64Strict } from './signing-key.ts'
import { storeDirOf, storePathFromBaseName } from './store-path.ts'

export class FingerprintError extends Error {
  override name = 'FingerprintError'
}

export interface FingerprintInput {
  storePath: string
  narHash: Hash
  narSize: number
  /** Base names, as in a narinfo's References line. */
  references: readonly string[]
}

export function fingerprint (info: FingerprintInput): string {
  // Nix refuses too: a size of 0 means "unknown", and signing it would vouch for nothing.
  if (info.narSize <= 0) throw new FingerprintError(`cannot fingerprint ${info.storePath}: its NAR size is not known`)
  const storeDir = storeDirOf(info.storePath)
  const refs = sortedUnique(info.references).map(r => storePathFromBaseName(r, storeDir))
  return `1;${info.storePath};${info.narHash.toNix32()};${info.narSize};${refs.join(',')}`
}

/** PKCS #8 DER of an Ed25519 private key, up to its 32-byte seed (RFC 8410). */
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')
const keyObjects = new WeakMap<SecretKey, KeyObject>()

/**
 * Signs `data`, returning `keyname:base64(signature)` (Nix's signDetached). Ed25519 signatures
 * are deterministic, so OpenSSL's (node:crypto, 0.03 ms here) are the bytes noble's pure-JS
 * signing gave (0.4 ms); every served path info is signed, so the difference shows per job.
 */
export function signDetached (data: string | Uint8Array, key: SecretKey): string {
  const message = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
  let keyObject = keyObjects.get(key)
  if (keyObject === undefined) {
    keyObject = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, key.secret.subarray(0, SEED_BYTES)]), format: 'der', type: 'pkcs8' })
    keyObjects.set(key, keyObject)
  }
  return `${key.name}:${sign(null, message, keyObject).toString('base64')}`
}

/** Why one signature did not verify. */
export type SignatureProblem =
  | 'malformed' // not `name:base64` of 64 bytes
  | 'untrusted-key' // no trusted key of that name
  | 'invalid' // a trusted key of that name, but the signature does not match

export type SignatureCheck =
  | { ok: true, keyName: string }
  | SignatureFailure

export interface SignatureFailure { ok: false, problem: SignatureProblem, keyName: string }

/** Checks one `name:base64` signature of `data` against the trusted keys (Nix's verifyDetached). */
export function checkDetached (data: string | Uint8Array, sig: string, trusted: readonly PublicKey[]): SignatureCheck {
  const colon = sig.indexOf(':')
  const keyName = colon < 0 ? '' : sig.slice(0, colon)
  if (colon < 0) return { ok: false, problem: 'malformed', keyName }
  const bytes = decodeBase64Strict(sig.slice(colon + 1))
  if (bytes === undefined || bytes.length !== SIGNATURE_BYTES) return { ok: false, problem: 'malformed', keyName }
  const candidates = trusted.filter(k => k.name === keyName)
  if (candidates.length === 0) return { ok: false, problem: 'untrusted-key', keyName }
  const message = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
  for (const key of candidates) {
    let good = false
    try {
      // Strict RFC 8032 checks, closer to libsodium (which Nix uses) than ZIP-215's.
      good = ed.verify(bytes, message, key.key, { zip215: false })
    } catch {
      good = false // a public key that is not a curve point
    }
    if (good) return { ok: true, keyName }
  }
  return { ok: false, problem: 'invalid', keyName }
}

export function verifyDetached (data: string | Uint8Array, sig: string, trusted: readonly PublicKey[]): boolean {
  return checkDetached(data, sig, trusted).ok
}

/** A copy of `info` with a signature by `key` added (signatures stay sorted and unique). */
export function signNarinfo (info: NarInfo, key: SecretKey): NarInfo {
  const sig = signDetached(fingerprint(info), key)
  return { ...info, sigs: sortedUnique([...info.sigs, sig]) }
}

export type NarinfoVerification =
  | { ok: true, keyName: string, sig: string }
  | { ok: false, reason: string, checks: Array<{ sig: string } & SignatureFailure> }

/**
 * Which trusted key vouches for this narinfo: the first Sig line that verifies. When none
 * does, `reason` says why in one line and `checks` has the verdict for each Sig.
 */
export function verifyNarinfo (info: NarInfo, trusted: readonly PublicKey[]): NarinfoVerification {
  if (info.sigs.length === 0) return { ok: false, reason: `${info.storePath} has no signatures`, checks: [] }
  let data: string
  try {
    data = fingerprint(info)
  } catch (err) {
    return { ok: false, reason: (err as Error).message, checks: [] }
  }
  const checks: Array<{ sig: string } & SignatureFailure> = []
  for (const sig of info.sigs) {
    const check = checkDetached(data, sig, trusted)
    if (check.ok) return { ok: true, keyName: check.keyName, sig }
    checks.push({ sig, ...check })
  }
  const said = checks.map(c => `${c.keyName === '' ? '(unnamed)' : c.keyName}: ${DESCRIBE[c.problem]}`)
  return { ok: false, reason: `no valid signature by a trusted key on ${info.storePath} (${said.join('; ')})`, checks }
}

const DESCRIBE: Record<SignatureProblem, string> = {
  malformed: 'malformed signature',
  'untrusted-key': 'key not trusted',
  invalid: 'signature does not match'
}
