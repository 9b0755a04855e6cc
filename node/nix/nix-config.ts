// The settings meshbuild hands every Nix command it runs, through NIX_CONFIG.
//
// Documented defaults (docs/operations.md):
// - `sandbox = false`: Debian's nix-bin ships it off, and a sandbox needs user namespaces
//   that containers often lack.
// - `build-users-group =` when running as root on a machine whose `nixbld` group has no
//   members: Nix refuses to build as root with a build-users-group that has no users.
// - `substituters =` (empty) unless the caller asks for some: meshbuild substitutes through
//   the mesh and its own cache; the default cache.nixos.org costs ~4 s of retries per build
//   on a machine without network.
// - `experimental-features = nix-command` so `nix path-info` and friends are available.
import { readFileSync } from 'node:fs'

export interface NixSettings {
  /** Substituter URLs Nix may use for this command; meshbuild's default is none. */
  substituters?: string[]
  trustedPublicKeys?: string[]
  /** Features this machine supports, passed as `system-features`. */
  systemFeatures?: string[]
  /** Extra `key = value` lines appended verbatim. */
  extra?: string[]
}

/** True when running as root and the `nixbld` group lists no users. */
export function rootWithoutBuildUsers (groupFile = '/etc/group'): boolean {
  if (process.getuid?.() !== 0) return false
  let groups = ''
  try {
    groups = readFileSync(groupFile, 'utf8')
  } catch {
    return true
  }
  const line = groups.split('\n').find(l => l.startsWith('nixbld:'))
  if (line == null) return true
  const members = line.split(':')[3] ?? ''
  return members.trim() === ''
}

/**
 * The NIX_CONFIG text: meshbuild's defaults, then the user's own NIX_CONFIG (which may override
 * them), then what the caller asked for explicitly (a substituter for one command, the node's
 * system features), which must win.
 */
export function nixConfigText (settings: NixSettings = {}, inherited = ''): string {
  const lines = ['sandbox = false', 'experimental-features = nix-command']
  if (rootWithoutBuildUsers()) lines.push('build-users-group =')
  lines.push('substituters =')
  if (inherited.trim() !== '') lines.push(inherited)
  if (settings.substituters != null) lines.push(`substituters = ${settings.substituters.join(' ')}`)
  if (settings.trustedPublicKeys != null) lines.push(`trusted-public-keys = ${settings.trustedPublicKeys.join(' ')}`)
  if (settings.systemFeatures != null) lines.push(`system-features = ${settings.systemFeatures.join(' ')}`)
  lines.push(...(settings.extra ?? []))
  return lines.join('\n')
}

/** The environment for a Nix child process: this process's, with NIX_CONFIG set. */
export function nixEnv (settings: NixSettings = {}, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return { ...base, NIX_CONFIG: nixConfigText(settings, base.NIX_CONFIG ?? '') }
}
