// A derivation's name and the package name within it, as Nix reads them: the keys under which
// build times are remembered (node/state/build-history.ts). Both run once per job of a plan
// (50,000 of them), so they scan characters rather than run a pattern per character.
import { DRV_EXTENSION, HASH_PART_LENGTH, StorePathError } from './store-path.ts'

/**
 * `<storeDir>/<hash>-hello-2.12.drv` -> `hello-2.12`: the base name without hash part and `.drv`.
 * Only the shape is checked (a dash after 32 characters, a name): the paths come from the store.
 */
export function derivationName (drvPath: string): string {
  const base = drvPath.slice(drvPath.lastIndexOf('/') + 1)
  if (base.length < HASH_PART_LENGTH + 2 || base.charCodeAt(HASH_PART_LENGTH) !== 0x2d) {
    throw new StorePathError(`'${base.slice(0, 80)}' is not a store path base name`)
  }
  const name = base.slice(HASH_PART_LENGTH + 1)
  return name.endsWith(DRV_EXTENSION) ? name.slice(0, -DRV_EXTENSION.length) : name
}

/**
 * Splits a derivation name as `builtins.parseDrvName` does (Nix 2.8, src/libstore/names.cc
 * `DrvName::DrvName`): the name is everything before the first `-` that is followed by a
 * character other than an ASCII letter (`isalpha` in the C locale), the version everything after
 * that dash; without such a dash the version is empty. `apache-httpd-2.0.48` -> `apache-httpd`, `2.0.48`.
 */
export function parseDrvName (s: string): { name: string, version: string } {
  for (let i = 0; i + 1 < s.length; i++) {
    if (s.charCodeAt(i) === 0x2d && !isAsciiLetter(s.charCodeAt(i + 1))) return { name: s.slice(0, i), version: s.slice(i + 1) }
  }
  return { name: s, version: '' }
}

function isAsciiLetter (c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
}
