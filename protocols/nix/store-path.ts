// Store paths as Nix writes them: `<storeDir>/<32 nix32 chars>-<name>`. narinfo files carry
// the full path in `StorePath` and base names (`<hash>-<name>`) in `References`/`Deriver`;
// both are checked here with Nix's rules before anything uses them as file names.

export const NIX_STORE_DIR = '/nix/store'
/** Characters in the hash part: 160 bits of nix32. */
export const HASH_PART_LENGTH = 32
/** Nix's limit on the name part (path.cc: 211, so that a base name fits in 255 bytes with room). */
export const MAX_NAME_LENGTH = 211
export const DRV_EXTENSION = '.drv'

const NIX32_CHAR = /^[0-9a-df-np-sv-z]$/
const NAME_CHAR = /^[0-9a-zA-Z+\-._?=]$/

export class StorePathError extends Error {
  override name = 'StorePathError'
}

export interface ParsedStorePath {
  storeDir: string
  /** `<hash>-<name>` */
  baseName: string
  hashPart: string
  name: string
}

/**
 * Checks the name part. Nix 2.8 allows letters, digits and `+-._?=`, 1 to 211 of them; like
 * later Nix we also refuse `.`, `..` and names starting `.-` or `..-`, which no Nix makes and
 * which would be dangerous as file names.
 */
export function checkStorePathName (name: string): void {
  if (name === '') throw new StorePathError('store path name is empty')
  if (name.length > MAX_NAME_LENGTH) {
    throw new StorePathError(`store path name is ${name.length} characters long, more than ${MAX_NAME_LENGTH}`)
  }
  for (let i = 0; i < name.length; i++) {
    const c = name[i] ?? ''
    if (!NAME_CHAR.test(c)) throw new StorePathError(`store path name '${name}' has illegal character '${c}' at offset ${i}`)
  }
  if (name === '.' || name === '..' || name.startsWith('.-') || name.startsWith('..-')) {
    throw new StorePathError(`store path name '${name}' is not allowed`)
  }
}

/** Parses `<hash>-<name>`; throws StorePathError saying what is wrong. */
export function parseBaseName (baseName: string): ParsedStorePath {
  if (baseName.length < HASH_PART_LENGTH + 2) {
    throw new StorePathError(`'${baseName}' is too short to be a store path base name`)
  }
  const hashPart = baseName.slice(0, HASH_PART_LENGTH)
  for (let i = 0; i < HASH_PART_LENGTH; i++) {
    const c = hashPart[i] ?? ''
    if (!NIX32_CHAR.test(c)) {
      throw new StorePathError(`store path '${baseName}' has illegal nix32 character '${c}' at offset ${i}`)
    }
  }
  if (baseName[HASH_PART_LENGTH] !== '-') {
    throw new StorePathError(`store path '${baseName}' has no '-' after its hash part`)
  }
  const name = baseName.slice(HASH_PART_LENGTH + 1)
  try {
    checkStorePathName(name)
  } catch (err) {
    throw new StorePathError(`store path '${baseName}': ${(err as Error).message}`)
  }
  return { storeDir: NIX_STORE_DIR, baseName, hashPart, name }
}

/**
 * Parses a full store path. It must sit directly in `storeDir` and be canonical (no `//`,
 * `.`, `..` or trailing `/`): Nix canonicalises first, we refuse instead.
 */
export function parseStorePath (path: string, storeDir: string = NIX_STORE_DIR): ParsedStorePath {
  const slash = path.lastIndexOf('/')
  const dir = slash >= 0 ? path.slice(0, slash) : ''
  if (dir !== storeDir) throw new StorePathError(`path '${path}' is not directly in the Nix store ${storeDir}`)
  const parsed = parseBaseName(path.slice(slash + 1))
  return { ...parsed, storeDir }
}

export function isStorePath (path: string, storeDir: string = NIX_STORE_DIR): boolean {
  try {
    parseStorePath(path, storeDir)
    return true
  } catch {
    return false
  }
}

/** `/nix/store/<hash>-<name>` -> `<hash>-<name>`, checked. */
export function storePathBaseName (path: string, storeDir: string = NIX_STORE_DIR): string {
  return parseStorePath(path, storeDir).baseName
}

/** The hash part of a full store path or of a base name. */
export function storePathHashPart (pathOrBaseName: string, storeDir: string = NIX_STORE_DIR): string {
  return pathOrBaseName.includes('/')
    ? parseStorePath(pathOrBaseName, storeDir).hashPart
    : parseBaseName(pathOrBaseName).hashPart
}

/** `<hash>-<name>` -> `<storeDir>/<hash>-<name>`, checked. */
export function storePathFromBaseName (baseName: string, storeDir: string = NIX_STORE_DIR): string {
  parseBaseName(baseName)
  return `${storeDir}/${baseName}`
}

/** The store directory a full store path lives in (`/nix/store` for `/nix/store/<hash>-x`). */
export function storeDirOf (path: string): string {
  const slash = path.lastIndexOf('/')
  const dir = slash > 0 ? path.slice(0, slash) : ''
  if (dir === '') throw new StorePathError(`path '${path}' names no store directory`)
  parseBaseName(path.slice(slash + 1))
  return dir
}

/** True for a `.drv` store path or base name, as Nix decides: by the name's extension. */
export function isDerivation (pathOrBaseName: string): boolean {
  const base = pathOrBaseName.slice(pathOrBaseName.lastIndexOf('/') + 1)
  try {
    return parseBaseName(base).name.endsWith(DRV_EXTENSION)
  } catch {
    return false
  }
}
