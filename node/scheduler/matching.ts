// Which machine may build which derivation: the rule of Nix's remote-build hook
// (build-remote.cc), so a derivation goes exactly where `nix.buildMachines` would send it.

export interface MachineCapabilities {
  systems: readonly string[]
  /** Features the machine supports (Nix's supportedFeatures). */
  features: readonly string[]
  /** Features a derivation must require to be built here (Nix's mandatoryFeatures). */
  mandatoryFeatures: readonly string[]
}

export interface BuildRequirements {
  system: string
  requiredFeatures: readonly string[]
}

/**
 * Nix: `(system == "builtin" || systemSupported(system)) && allSupported(required) && mandatoryMet(required)`,
 * where a mandatory feature also counts as supported.
 */
export function canBuild (machine: MachineCapabilities, job: BuildRequirements): boolean {
  if (job.system !== 'builtin' && !machine.systems.includes(job.system)) return false
  for (const f of job.requiredFeatures) {
    if (!machine.features.includes(f) && !machine.mandatoryFeatures.includes(f)) return false
  }
  for (const f of machine.mandatoryFeatures) {
    if (!job.requiredFeatures.includes(f)) return false
  }
  return true
}

/** A stable key for grouping jobs by what they need, used by offers. */
export function requirementsKey (job: BuildRequirements): string {
  return `${job.system}|${[...job.requiredFeatures].sort().join(',')}`
}
