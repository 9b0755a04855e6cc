// What the local Nix says about this machine: its system, the extra platforms it builds for,
// and its system features. `meshbuild join` takes its defaults from here.
import { execText } from './exec.ts'

export interface LocalSystem {
  system: string
  extraPlatforms: string[]
  systemFeatures: string[]
}

interface ConfigValue { value: unknown }

export async function readLocalSystem (): Promise<LocalSystem> {
  const text = await execText('nix', ['show-config', '--json'])
  const config = JSON.parse(text) as Record<string, ConfigValue | undefined>
  const list = (k: string): string[] => {
    const v = config[k]?.value
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []
  }
  const system = config.system?.value
  if (typeof system !== 'string') throw new Error('nix show-config did not report a system')
  return { system, extraPlatforms: list('extra-platforms'), systemFeatures: list('system-features') }
}
