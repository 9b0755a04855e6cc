// Nix signing keys: `name:base64(64 bytes: 32-byte seed, 32-byte public key)` for a secret key
// and `name:base64(32 bytes)` for a public key, as `nix-store --generate-binary-cache-key`
// writes them (no trailing newline). Ed25519 via @noble/ed25519, SHA-512 from node:crypto.
import { createHash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import * as ed from '@noble/ed25519'

// noble's synchronous API needs a SHA-512; node's is native and fast.
ed.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash('sha512').update(message).digest())

export const SEED_BYTES = 32
export const PUBLIC_KEY_BYTES = 32
/** libsodium's secret key layout, which Nix stores: seed then public key. */
export const SECRET_KEY_BYTES = 64
export const SIGNATURE_BYTES = 64

export class KeyFormatError extends Error {
  override name = 'KeyFormatError'
}

export interface SecretKey {
  name: string
  /** 64 bytes: seed (32) then public key (32). */
  secret: Uint8Array
}

export interface PublicKey {
  name: string
  /** 32 bytes. */
  key: Uint8Array
}

/**
 * Key names end up in `trusted-public-keys` (space-separated) and before the first `:` of
 * a signature, so they may hold neither whitespace nor a colon.
 */
export function checkKeyName (name: string): void {
  if (name === '') throw new KeyFormatError('key name is empty')
  const bad = /[\s:]/.exec(name)
  if (bad != null) throw new KeyFormatError(`key name '${name}' contains ${JSON.stringify(bad[0])}; names may hold neither whitespace nor ':'`)
}

/** Strict base64: what Buffer decodes must encode back to the same text. */
export function decodeBase64Strict (text: string): Uint8Array | undefined {
  const bytes = Buffer.from(text, 'base64')
  return bytes.toString('base64') === text ? new Uint8Array(bytes) : undefined
}

function splitKey (text: string, what: string): { name: string, bytes: Uint8Array } {
  // Files written by hand or by `echo` end in a newline; Nix tolerates that, so do we.
  const t = text.trim()
  const colon = t.indexOf(':')
  if (colon < 0) throw new KeyFormatError(`${what} is not of the form 'name:base64'`)
  const name = t.slice(0, colon)
  checkKeyName(name)
  const b64 = t.slice(colon + 1)
  if (b64 === '') throw new KeyFormatError(`${what} '${name}' has no key material after ':'`)
  const bytes = decodeBase64Strict(b64)
  if (bytes === undefined) throw new KeyFormatError(`${what} '${name}' is not valid base64 after ':'`)
  return { name, bytes }
}

export function parseSecretKey (text: string): SecretKey {
  const { name, bytes } = splitKey(text, 'secret key')
  if (bytes.length !== SECRET_KEY_BYTES) {
    const hint = bytes.length === PUBLIC_KEY_BYTES ? ' (this looks like a public key)' : ''
    throw new KeyFormatError(`secret key '${name}' has ${bytes.length} bytes, expected ${SECRET_KEY_BYTES}${hint}`)
  }
  // libsodium signs with the stored public half; a mismatch would make signatures nobody verifies.
  const derived = ed.getPublicKey(bytes.subarray(0, SEED_BYTES))
  if (!Buffer.from(derived).equals(Buffer.from(bytes.subarray(SEED_BYTES)))) {
    throw new KeyFormatError(`secret key '${name}' is corrupt: its public half does not match its seed`)
  }
  return { name, secret: bytes }
}

export function parsePublicKey (text: string): PublicKey {
  const { name, bytes } = splitKey(text, 'public key')
  if (bytes.length !== PUBLIC_KEY_BYTES) {
    const hint = bytes.length === SECRET_KEY_BYTES ? ' (this looks like a secret key)' : ''
    throw new KeyFormatError(`public key '${name}' has ${bytes.length} bytes, expected ${PUBLIC_KEY_BYTES}${hint}`)
  }
  return { name, key: bytes }
}

/** `name:base64`, no newline, as Nix writes it. */
export function formatSecretKey (key: SecretKey): string {
  return `${key.name}:${Buffer.from(key.secret).toString('base64')}`
}

export function formatPublicKey (key: PublicKey): string {
  return `${key.name}:${Buffer.from(key.key).toString('base64')}`
}

export function secretKeyFromSeed (name: string, seed: Uint8Array): SecretKey {
  checkKeyName(name)
  if (seed.length !== SEED_BYTES) throw new KeyFormatError(`an ed25519 seed has ${SEED_BYTES} bytes, not ${seed.length}`)
  const secret = new Uint8Array(SECRET_KEY_BYTES)
  secret.set(seed, 0)
  secret.set(ed.getPublicKey(seed), SEED_BYTES)
  return { name, secret }
}

export function publicKeyOf (key: SecretKey): PublicKey {
  return { name: key.name, key: key.secret.slice(SEED_BYTES) }
}

export function generateKeyPair (name: string): { secretKey: SecretKey, publicKey: PublicKey } {
  const secretKey = secretKeyFromSeed(name, new Uint8Array(randomBytes(SEED_BYTES)))
  return { secretKey, publicKey: publicKeyOf(secretKey) }
}

/** Reads a key file, naming the file in any format error. */
export async function readSecretKeyFile (path: string): Promise<SecretKey> {
  const text = await readFile(path, 'utf8')
  return inFile(path, () => parseSecretKey(text))
}

export async function readPublicKeyFile (path: string): Promise<PublicKey> {
  const text = await readFile(path, 'utf8')
  return inFile(path, () => parsePublicKey(text))
}

function inFile<T> (path: string, parse: () => T): T {
  try {
    return parse()
  } catch (err) {
    if (err instanceof KeyFormatError) throw new KeyFormatError(`${path}: ${err.message}`)
    throw err
  }
}
