// Helpers for tests that use the real Nix on this machine.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execText } from '../../node/nix/exec.ts'

/** A fresh temporary directory, removed by the returned cleanup. */
export async function tempDir (prefix = 'meshbuild-test-'): Promise<{ dir: string, cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  return { dir, cleanup: async () => { await rm(dir, { recursive: true, force: true }) } }
}

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
