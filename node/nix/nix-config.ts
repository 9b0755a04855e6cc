// The settings meshbuild hands every Nix command it runs, through NIX_CONFIG.
//
// Documented defaults (docs/operations.md):
// - the sandbox: on (`sandbox = true`) when running as root with build users (Nix's own default
//   on Linux; Debian's nix.conf turns it off, but it works there: seen on Debian's Nix 2.8 as
//   root with nixbld1..10). Off (`sandbox = false`) only as root without build users, including
//   an effective `build-users-group =`, as in test hosts. Not root: Nix's configuration (or its
//   daemon) decides. `join` says which on start.
// - `build-users-group =` when running as root on a machine whose build-users group has no
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

/** Nix's build-users group when no configuration names one (as root). */
const DEFAULT_BUILD_USERS_GROUP = 'nixbld'
const SYSTEM_NIX_CONF = '/etc/nix/nix.conf'

/** Whether builds run in Nix's sandbox, as meshbuild sets it, and why. */
export interface SandboxPolicy {
  /** undefined: meshbuild sets nothing and Nix's own configuration decides. */
  sandbox: boolean | undefined
  /** Also pass `build-users-group =`: root, and the group has no members. */
  clearBuildUsersGroup: boolean
  reason: string
}

export interface SandboxProbe {
  uid?: number
  groupFile?: string
  nixConfFile?: string
  /** The NIX_CONFIG this process inherited. */
  inherited?: string
}

/** The last value of `name` in nix.conf-style text (later lines win, as in Nix), if any. */
function lastSetting (text: string, name: string): string | undefined {
  let value: string | undefined
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Za-z0-9-]+)\s*=(.*)$/.exec(line.replace(/#.*$/, ''))
    if (m?.[1] === name) value = (m[2] ?? '').trim()
  }
  return value
}

function readText (file: string): string {
  try {
    return readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

/**
 * The sandbox policy for this machine: Nix's sandbox with build users wherever they exist;
 * off only as root without build users (no group members, or an effective empty
 * `build-users-group`), where Nix would build as root.
 */
export function sandboxPolicy (probe: SandboxProbe = {}): SandboxPolicy {
  const uid = probe.uid ?? process.getuid?.()
  const inherited = probe.inherited ?? process.env.NIX_CONFIG ?? ''
  if (uid !== 0) return { sandbox: undefined, clearBuildUsersGroup: false, reason: 'not running as root: Nix\'s own configuration (or its daemon) decides' }
  const conf = readText(probe.nixConfFile ?? SYSTEM_NIX_CONF)
  const group = lastSetting(`${conf}\n${inherited}`, 'build-users-group') ?? DEFAULT_BUILD_USERS_GROUP
  if (group === '') return { sandbox: false, clearBuildUsersGroup: false, reason: 'running as root with build-users-group empty: builds would run as root' }
  const line = readText(probe.groupFile ?? '/etc/group').split('\n').find(l => l.startsWith(`${group}:`))
  const members = (line?.split(':')[3] ?? '').trim()
  if (members === '') return { sandbox: false, clearBuildUsersGroup: true, reason: `running as root and the build-users group ${group} has no members: builds run as root` }
  return { sandbox: true, clearBuildUsersGroup: false, reason: `running as root with build users (group ${group})` }
}

/** True when running as root and the build-users group lists no users. */
export function rootWithoutBuildUsers (groupFile = '/etc/group'): boolean {
  return sandboxPolicy({ groupFile }).clearBuildUsersGroup
}

/**
 * The NIX_CONFIG text: meshbuild's defaults, then the user's own NIX_CONFIG (which may override
 * them), then what the caller asked for explicitly (a substituter for one command, the node's
 * system features), which must win.
 */
export function nixConfigText (settings: NixSettings = {}, inherited = ''): string {
  const policy = sandboxPolicy({ inherited })
  const lines = ['experimental-features = nix-command']
  if (policy.sandbox !== undefined) lines.push(`sandbox = ${policy.sandbox}`)
  if (policy.clearBuildUsersGroup) lines.push('build-users-group =')
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
