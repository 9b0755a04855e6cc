// Helpers for tests that use the real Nix on this machine.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { execText } from '../../node/nix/exec.ts'

export { tempDir } from './temp-dir.ts'

/** Instantiates a Nix expression (text) and returns the .drv paths it evaluates to, one per attribute. */
export async function instantiate (expr: string, dir: string, attrs: string[] = []): Promise<string[]> {
  const file = join(dir, `expr-${Math.random().toString(36).slice(2)}.nix`)
  await writeFile(file, expr)
  const args = [file, ...attrs.flatMap(a => ['-A', a])]
  const out = await execText('nix-instantiate', args)
  return out.trim().split('\n').filter(l => l !== '').map(l => l.replace(/!.*$/, ''))
}

/** Runs a Nix tool with meshbuild's settings and returns its stdout. */
export async function nix (cmd: string, ...args: string[]): Promise<string> {
  return await execText(cmd, args)
}

/** A derivation whose builder runs `script` with /bin/sh; `deps` are interpolated by the caller. */
export function shDrv (name: string, script: string, extra = ''): string {
  return `derivation { name = ${JSON.stringify(name)}; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ${JSON.stringify(script)} ]; ${extra} }`
}
