// The node's Nix signing key: made on first start, kept in the data directory (secret mode 0600),
// published in its beacon. A worker signs the narinfos of what it built with it; the signer
// re-signs only what a key it trusts vouched for.
import { readFile, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { formatPublicKey, formatSecretKey, generateKeyPair, parseSecretKey, publicKeyOf, type PublicKey, type SecretKey } from '../../protocols/nix/signing-key.ts'

export const NODE_SECRET_KEY_FILE = 'signing-key.sec'
export const NODE_PUBLIC_KEY_FILE = 'signing-key.pub'

export interface NodeKey {
  secret: SecretKey
  public: PublicKey
}

/** Loads the node's key, or makes one named `<hostname>-<last 8 of the peer id>`. */
export async function loadOrCreateNodeKey (dataDir: string, peerId: string): Promise<NodeKey> {
  const secretPath = join(dataDir, NODE_SECRET_KEY_FILE)
  try {
    const secret = parseSecretKey(await readFile(secretPath, 'utf8'))
    return { secret, public: publicKeyOf(secret) }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read the node signing key ${secretPath}: ${(err as Error).message}`)
  }
  const name = `${hostname().replace(/[^A-Za-z0-9._-]/g, '-')}-${peerId.slice(-8)}`
  const pair = generateKeyPair(name)
  await writeFile(secretPath, formatSecretKey(pair.secretKey), { mode: 0o600, flag: 'wx' })
  await writeFile(join(dataDir, NODE_PUBLIC_KEY_FILE), formatPublicKey(pair.publicKey), { mode: 0o644 })
  return { secret: pair.secretKey, public: pair.publicKey }
}
